//! Which customers and orders a token may see and act on.
//!
//! A client is bound to a tenant (`gateway.clients.<id>.tenant`), which its tokens carry as
//! the `tenant` claim; customers it registers belong to that tenant, and their orders with
//! them. A client with the `admin` scope has no tenant and sees every one. The gateway
//! passes the tenant to order-view in [`TENANT_HEADER`] and order-view filters there, so a
//! listing, a snapshot or the unfiltered feed never carries another tenant's rows; a
//! request without the header sees all, which is why the gateway never forwards a
//! client's own copy of it and always sets it for a tenant's token.
//!
//! Commands check ownership here: a command on another tenant's customer or order is a
//! 403 naming it. Reads of another tenant's rows are order-view's 404s instead, as for rows
//! that do not exist.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{StatusCode, header};
use serde_json::Value;

use crate::error::ApiError;
use crate::jwt::Claims;
use crate::orderview::{self, OrderView};

/// The header order-view filters by; only the gateway sets it.
pub const TENANT_HEADER: &str = "x-feedline-tenant";

/// What a tenant name may hold: it travels in a header and a claim and lands in logs.
pub const NAME_RULE: &str = "must be 1 to 64 characters of letters, digits, '.', '_' or '-'";

/// Whether `name` follows [`NAME_RULE`].
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whose rows a request sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenancy {
    /// An admin token: every tenant, and customers of none.
    All,
    Tenant(String),
}

/// A resource a command acts on, for the 403 that names it.
#[derive(Debug, Clone, Copy)]
pub enum Resource {
    Customer,
    Order,
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Resource::Customer => "customer",
            Resource::Order => "order",
        }
    }

    fn path(self, id: &str) -> String {
        format!("/{}s/{id}", self.name())
    }
}

impl Tenancy {
    /// The token's tenancy. A tenant claim always restricts, whatever the scopes; a token
    /// with neither a tenant nor the admin scope is refused rather than shown everything.
    pub fn of(claims: &Claims) -> Result<Self, ApiError> {
        match &claims.tenant {
            Some(tenant) => Ok(Tenancy::Tenant(tenant.clone())),
            None if claims.has_scope(crate::auth::Scope::Admin.as_str()) => Ok(Tenancy::All),
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "no_tenant",
                "the token names no tenant and lacks the admin scope",
            )
            .header(
                header::WWW_AUTHENTICATE,
                r#"Bearer realm="feedline", error="insufficient_scope", scope="admin""#,
            )),
        }
    }

    /// The value of [`TENANT_HEADER`] for order-view; `None` for all tenants.
    pub fn header(&self) -> Option<&str> {
        match self {
            Tenancy::All => None,
            Tenancy::Tenant(tenant) => Some(tenant),
        }
    }

    /// The tenant a new customer of this request belongs to. An admin may name one in the
    /// request (`requested`); a tenant may only name its own.
    pub fn new_customer(&self, requested: Option<&str>) -> Result<Option<String>, ApiError> {
        match (self, requested) {
            (_, Some(name)) if !valid_name(name) => Err(ApiError::invalid_field(
                "tenant",
                format!("tenant {NAME_RULE}"),
            )),
            (Tenancy::All, requested) => Ok(requested.map(str::to_owned)),
            (Tenancy::Tenant(own), Some(other)) if other != own => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this client may only register customers of tenant {own}"),
            )
            .field("tenant")),
            (Tenancy::Tenant(own), _) => Ok(Some(own.clone())),
        }
    }

    /// Whether a row of order-view (`view`, with its `tenant`) belongs to this request.
    pub fn owns(&self, view: &Value, nested: &str) -> bool {
        match self {
            Tenancy::All => true,
            Tenancy::Tenant(own) => {
                orderview::field(view, nested, "tenant").and_then(Value::as_str)
                    == Some(own.as_str())
            }
        }
    }

    /// Refuses a command on a `resource` of another tenant, blamed on `field`.
    pub fn forbidden(resource: Resource, id: &str, field: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {} belongs to another tenant",
                resource.name(),
                resource.path(id)
            ),
        )
        .field(field)
    }

    /// Checks that the customer a command of a tenant acts on is the tenant's: looked up
    /// in order-view (all tenants, so that another tenant's is a 403, not a 404). One that
    /// order-view does not show yet may just have been registered: a 404 with Retry-After.
    /// Admins act on any customer, known or not (the services decide, as before).
    pub async fn check_customer(
        &self,
        view: &OrderView,
        owners: &Owners,
        customer_id: &str,
        field: &str,
    ) -> Result<(), ApiError> {
        let Tenancy::Tenant(own) = self else {
            return Ok(());
        };
        if let Some(owner) = owners.get(customer_id) {
            return match owner {
                Some(owner) if owner == *own => Ok(()),
                _ => Err(Self::forbidden(Resource::Customer, customer_id, field)),
            };
        }
        let path = Resource::Customer.path(customer_id);
        let found = view.get_json(&path).await.map_err(|e| {
            tracing::warn!(error = %e, customer_id, "cannot look up a customer's tenant");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                "cannot check who the customer belongs to; retry later",
            )
            .header(header::RETRY_AFTER, "2")
        })?;
        if let Some(customer) = &found {
            let owner = orderview::field(customer, "customer", "tenant").and_then(Value::as_str);
            owners.insert(customer_id, owner);
        }
        match found {
            Some(customer) if self.owns(&customer, "customer") => Ok(()),
            Some(_) => Err(Self::forbidden(Resource::Customer, customer_id, field)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_customer",
                format!(
                    "customer {path} is not known (yet): a customer just registered shows \
                     here within moments"
                ),
            )
            .field(field)
            .header(header::RETRY_AFTER, "1")),
        }
    }
}

/// How many customers' tenants the gateway remembers (a few MiB at most).
pub const OWNERS_REMEMBERED: usize = 100_000;

/// The tenant of each customer a tenant's command looked up. A customer's tenant is set
/// when it is registered and never changes, so an answer stays true and the next command
/// on the same customer needs no round trip to order-view. Bounded: when full it starts over.
#[derive(Debug)]
pub struct Owners {
    known: Mutex<HashMap<String, Option<String>>>,
    max: usize,
}

impl Owners {
    pub fn new(max: usize) -> Self {
        Self {
            known: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// `Some(owner)` when the customer was seen (`owner` is `None` for a customer of no
    /// tenant), `None` when it has to be looked up.
    fn get(&self, customer_id: &str) -> Option<Option<String>> {
        self.known
            .lock()
            .expect("owners lock")
            .get(customer_id)
            .cloned()
    }

    fn insert(&self, customer_id: &str, owner: Option<&str>) {
        let mut known = self.known.lock().expect("owners lock");
        if known.len() >= self.max {
            known.clear();
        }
        known.insert(customer_id.to_owned(), owner.map(str::to_owned));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(scope: &str, tenant: Option<&str>) -> Claims {
        Claims {
            sub: "c".into(),
            iat: 0,
            exp: 1,
            scope: scope.into(),
            jti: String::new(),
            tenant: tenant.map(Into::into),
            ..Claims::default()
        }
    }

    #[test]
    fn a_token_sees_its_tenant_all_as_admin_and_nothing_without_either() {
        assert_eq!(
            Tenancy::of(&claims("feed:read", Some("acme"))).unwrap(),
            Tenancy::Tenant("acme".into())
        );
        assert_eq!(
            Tenancy::of(&claims("feed:read admin", Some("acme"))).unwrap(),
            Tenancy::Tenant("acme".into()),
            "a tenant claim always restricts"
        );
        assert_eq!(
            Tenancy::of(&claims("feed:read admin", None)).unwrap(),
            Tenancy::All
        );
        let refused = Tenancy::of(&claims("feed:read", None)).unwrap_err();
        assert_eq!(
            (refused.status, refused.code),
            (StatusCode::FORBIDDEN, "no_tenant")
        );
    }

    #[test]
    fn ownership_by_the_tenant_of_the_row() {
        let acme = Tenancy::Tenant("acme".into());
        assert!(acme.owns(&json!({"tenant": "acme"}), "order"));
        assert!(acme.owns(&json!({"order": {"tenant": "acme"}}), "order"));
        assert!(!acme.owns(&json!({"tenant": "globex"}), "order"));
        assert!(!acme.owns(&json!({"tenant": null}), "order"));
        assert!(!acme.owns(&json!({}), "order"));
        assert!(Tenancy::All.owns(&json!({"tenant": "globex"}), "order"));
    }

    #[test]
    fn new_customers_belong_to_the_tenant_or_to_whom_an_admin_says() {
        let acme = Tenancy::Tenant("acme".into());
        assert_eq!(acme.new_customer(None).unwrap().as_deref(), Some("acme"));
        assert_eq!(
            acme.new_customer(Some("acme")).unwrap().as_deref(),
            Some("acme")
        );
        let other = acme.new_customer(Some("globex")).unwrap_err();
        assert_eq!(
            (other.status, other.field.as_deref()),
            (StatusCode::FORBIDDEN, Some("tenant"))
        );
        assert_eq!(Tenancy::All.new_customer(None).unwrap(), None);
        assert_eq!(
            Tenancy::All
                .new_customer(Some("globex"))
                .unwrap()
                .as_deref(),
            Some("globex")
        );
        let bad = Tenancy::All.new_customer(Some("a b")).unwrap_err();
        assert_eq!(bad.field.as_deref(), Some("tenant"));
    }

    #[test]
    fn tenant_names() {
        for good in ["acme", "a", "acme-eu.2_x", &"x".repeat(64)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "a b", "ä", "a/b", "a\n", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn owners_remember_what_was_looked_up_and_start_over_when_full() {
        let owners = Owners::new(2);
        assert_eq!(owners.get("c1"), None);
        owners.insert("c1", Some("acme"));
        owners.insert("c2", None);
        assert_eq!(owners.get("c1"), Some(Some("acme".to_owned())));
        assert_eq!(owners.get("c2"), Some(None));
        owners.insert("c3", Some("globex"));
        assert_eq!(owners.get("c1"), None, "full: started over");
        assert_eq!(owners.get("c3"), Some(Some("globex".to_owned())));
    }
}
