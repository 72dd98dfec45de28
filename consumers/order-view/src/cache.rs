//! The hot in-memory cache in front of SQLite: orders and customers by id, bounded.
//!
//! Bounded with two generations instead of a strict LRU: entries go into the young
//! generation; when it is full it becomes the old one and the previous old one is dropped.
//! A hit in the old generation moves the entry back to the young one. Reads take only a read
//! lock (no recency list to update), at most `capacity` entries are held, and what is read or
//! written often stays.
//!
//! The consumer is the only writer of the read model and updates the cache after each commit.
//! A reader that missed fills the cache with what it read from SQLite only if no commit was
//! published in between ([`Cache::epoch`]), so a slow reader never puts back an older row
//! over a newer one.

use foldhash::{HashMap, HashMapExt};
use std::sync::{Arc, RwLock};

use crate::model::{Customer, Order};

#[derive(Debug)]
struct Generations<V> {
    young: HashMap<String, Arc<V>>,
    old: HashMap<String, Arc<V>>,
    /// Entries per generation.
    limit: usize,
}

impl<V> Generations<V> {
    fn new(capacity: usize) -> Self {
        Generations {
            young: HashMap::new(),
            old: HashMap::new(),
            limit: (capacity / 2).max(1),
        }
    }

    fn get(&self, id: &str) -> Option<(Arc<V>, bool)> {
        if let Some(v) = self.young.get(id) {
            return Some((v.clone(), true));
        }
        self.old.get(id).map(|v| (v.clone(), false))
    }

    fn insert(&mut self, id: String, value: Arc<V>) {
        self.old.remove(&id);
        self.young.insert(id, value);
        if self.young.len() >= self.limit {
            self.old = std::mem::take(&mut self.young);
        }
    }

    fn promote(&mut self, id: &str) {
        if let Some((id, value)) = self.old.remove_entry(id) {
            self.insert(id, value);
        }
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

#[derive(Debug)]
struct Inner {
    orders: Generations<Order>,
    customers: Generations<Customer>,
    /// Bumped by every writer update.
    epoch: u64,
}

/// Orders and customers by id; `capacity` entries of each at most.
#[derive(Debug)]
pub struct Cache {
    inner: RwLock<Inner>,
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        Cache {
            inner: RwLock::new(Inner {
                orders: Generations::new(capacity),
                customers: Generations::new(capacity),
                epoch: 0,
            }),
        }
    }

    pub fn order(&self, id: &str) -> Option<Arc<Order>> {
        self.get(id, |i| &i.orders, |i| &mut i.orders)
    }

    pub fn customer(&self, id: &str) -> Option<Arc<Customer>> {
        self.get(id, |i| &i.customers, |i| &mut i.customers)
    }

    fn get<V>(
        &self,
        id: &str,
        read: impl Fn(&Inner) -> &Generations<V>,
        write: impl Fn(&mut Inner) -> &mut Generations<V>,
    ) -> Option<Arc<V>> {
        let (value, young) = read(&self.read()).get(id)?;
        if !young {
            write(&mut self.write()).promote(id);
        }
        Some(value)
    }

    /// The writer's update after a commit: the rows as committed.
    pub fn update<'a>(
        &self,
        orders: impl IntoIterator<Item = &'a Order>,
        customers: impl IntoIterator<Item = &'a Customer>,
    ) {
        let mut inner = self.write();
        for o in orders {
            inner.orders.insert(o.id.clone(), Arc::new(o.clone()));
        }
        for c in customers {
            inner.customers.insert(c.id.clone(), Arc::new(c.clone()));
        }
        inner.epoch += 1;
    }

    /// Read before a SQLite read whose result may then be given to [`Cache::fill_order`].
    pub fn epoch(&self) -> u64 {
        self.read().epoch
    }

    /// Caches a row a reader loaded from SQLite, unless the writer changed the cache since
    /// `epoch` (the row may then be older than the cached one, or than an evicted one).
    pub fn fill_order(&self, order: Arc<Order>, epoch: u64) {
        let mut inner = self.write();
        if inner.epoch == epoch {
            inner.orders.insert(order.id.clone(), order);
        }
    }

    pub fn fill_customer(&self, customer: Arc<Customer>, epoch: u64) {
        let mut inner = self.write();
        if inner.epoch == epoch {
            inner.customers.insert(customer.id.clone(), customer);
        }
    }

    /// Forgets everything: after a failed write whose outcome is unknown.
    pub fn clear(&self) {
        let mut inner = self.write();
        inner.orders.clear();
        inner.customers.clear();
        inner.epoch += 1;
    }

    pub fn len(&self) -> (usize, usize) {
        let inner = self.read();
        (inner.orders.len(), inner.customers.len())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("cache lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("cache lock poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status;

    fn order(id: &str, total: i64) -> Order {
        Order {
            id: id.into(),
            customer_id: "c".into(),
            customer_name: None,
            status: Status::Pending,
            total_cents: total,
            reason: None,
            created_at: 0,
            updated_at: 0,
            tenant: None,
        }
    }

    #[test]
    fn stays_within_capacity_and_keeps_what_is_read() {
        let cache = Cache::new(10);
        cache.update([&order("keep", 1)], []);
        for i in 0..100 {
            cache.update([&order(&format!("o{i}"), i)], []);
            assert!(cache.order("keep").is_some(), "read entries stay ({i})");
            assert!(cache.len().0 <= 10);
        }
        assert!(cache.order("o0").is_none(), "unread entries go");
        assert_eq!(cache.order("o99").unwrap().total_cents, 99);
    }

    #[test]
    fn a_fill_after_a_commit_is_ignored() {
        let cache = Cache::new(10);
        let epoch = cache.epoch();
        cache.update([&order("o", 2)], []);
        cache.fill_order(Arc::new(order("o", 1)), epoch);
        assert_eq!(cache.order("o").unwrap().total_cents, 2);
        let epoch = cache.epoch();
        cache.fill_order(Arc::new(order("p", 1)), epoch);
        assert!(cache.order("p").is_some());
    }
}
