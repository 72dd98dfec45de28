//! Reading the Prometheus text format: what the gateway's ops page estimates freshness from,
//! and what the tests read scrapes with. A scrape is read for what it has, not validated.

/// One sample of the Prometheus text format: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sample carries every one of `labels` (and maybe more, such as `service`).
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(n, v)| self.label(n) == Some(*v))
    }
}

/// The samples of a Prometheus text exposition; comments, blank and malformed lines are
/// skipped (a scrape is read for what it has, not validated).
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(sample)
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after;
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?.parse().ok()?;
    (!name.is_empty()).then_some(Sample {
        name,
        labels,
        value,
    })
}

/// The inside of a label set, `a="x",b="y"}` → the pairs (values unescaped) and what follows the `}`.
pub fn label_set(mut text: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = text.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.trim(), value));
        text = &after[1 + end + 1..];
    }
}

/// The cumulative buckets `(le, count)` of histogram `name` in `text`, sorted by `le`,
/// series with other labels (such as `service`) added up per bound.
pub fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut buckets = Vec::new();
    for s in samples(text).filter(|s| s.name == bucket) {
        if let Some(le) = s.label("le").and_then(|le| le.parse::<f64>().ok()) {
            merge(&mut buckets, &[(le, s.value)]);
        }
    }
    buckets
}

/// Adds `more`'s counts to `into`'s per bound, keeping `into` sorted by bound: two
/// replicas' histograms become one, like `sum by (le)`.
pub fn merge(into: &mut Vec<(f64, f64)>, more: &[(f64, f64)]) {
    for &(le, count) in more {
        match into.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, total)) => *total += count,
            None => into.push((le, count)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The `q`-quantile of cumulative buckets `(le, count)` sorted by `le`, as Prometheus'
/// `histogram_quantile` estimates it: linear interpolation inside the bucket the rank
/// falls in (from 0 for the first bucket), the highest finite bound when it falls in the
/// `+Inf` bucket. `None` without a `+Inf` bucket, with fewer than two buckets, without
/// observations, or for `q` outside [0, 1].
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) || buckets.len() < 2 {
        return None;
    }
    if buckets.last()?.0 != f64::INFINITY {
        return None;
    }
    // Counts from different scrapes may be a little out of step; Prometheus makes them
    // monotonic the same way.
    let mut counts: Vec<f64> = buckets.iter().map(|(_, c)| *c).collect();
    for i in 1..counts.len() {
        counts[i] = counts[i].max(counts[i - 1]);
    }
    let observations = *counts.last()?;
    if observations <= 0.0 {
        return None;
    }
    let mut rank = q * observations;
    let b = counts.iter().position(|&c| c >= rank)?;
    if b == buckets.len() - 1 {
        return Some(buckets[b - 1].0);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return Some(buckets[0].0);
    }
    let end = buckets[b].0;
    let (start, mut count) = (if b == 0 { 0.0 } else { buckets[b - 1].0 }, counts[b]);
    if b > 0 {
        count -= counts[b - 1];
        rank -= counts[b - 1];
    }
    if count <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank / count))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESHNESS: &str = "feedline_order_view_freshness_seconds";

    const SCRAPE: &str = r#"# HELP feedline_order_view_freshness_seconds commit time minus event time
# TYPE feedline_order_view_freshness_seconds histogram
feedline_order_view_freshness_seconds_bucket{service="order-view",le="0.005"} 0
feedline_order_view_freshness_seconds_bucket{service="order-view",le="0.01"} 10
feedline_order_view_freshness_seconds_bucket{service="order-view",le="0.1"} 90
feedline_order_view_freshness_seconds_bucket{service="order-view",le="1"} 100
feedline_order_view_freshness_seconds_bucket{service="order-view",le="+Inf"} 100
feedline_order_view_freshness_seconds_sum{service="order-view"} 3.2
feedline_order_view_freshness_seconds_count{service="order-view"} 100
feedline_consumed_total{service="order-view",topic="a \"quoted\" \\ topic, {x}"} 7 1700000000000
"#;

    #[test]
    fn parses_samples_labels_escapes_and_timestamps() {
        let all: Vec<Sample> = samples(SCRAPE).collect();
        assert_eq!(all.len(), 8);
        let consumed = all
            .iter()
            .find(|s| s.name == "feedline_consumed_total")
            .unwrap();
        assert_eq!(consumed.value, 7.0);
        assert_eq!(consumed.label("service"), Some("order-view"));
        assert_eq!(consumed.label("topic"), Some(r#"a "quoted" \ topic, {x}"#));
        let inf = &all[4];
        assert_eq!(inf.label("le"), Some("+Inf"));
        assert_eq!(inf.value, 100.0);

        let plain = sample("up 1").unwrap();
        assert_eq!(
            (plain.name, plain.value, plain.labels.len()),
            ("up", 1.0, 0)
        );
        assert_eq!(
            sample("nan_metric NaN").map(|s| s.value.is_nan()),
            Some(true)
        );
        for junk in [
            "",
            "# TYPE x counter",
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "x",
            "x abc",
        ] {
            assert_eq!(sample(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn histogram_buckets_sorted_and_summed_over_label_sets() {
        let buckets = histogram(SCRAPE, FRESHNESS);
        assert_eq!(
            buckets,
            [
                (0.005, 0.0),
                (0.01, 10.0),
                (0.1, 90.0),
                (1.0, 100.0),
                (f64::INFINITY, 100.0)
            ]
        );
        // A second replica's series (another `service` label set) adds up per bound.
        let two = format!(
            "{SCRAPE}{}",
            SCRAPE.replace("order-view\"", "order-view-2\"")
        );
        assert_eq!(histogram(&two, FRESHNESS)[2], (0.1, 180.0));
        assert!(histogram(SCRAPE, "feedline_absent_seconds").is_empty());
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let buckets = histogram(SCRAPE, FRESHNESS);
        // rank 50 falls in (0.01, 0.1] holding 80 of them, 40 past its start.
        let p50 = quantile(0.5, &buckets).unwrap();
        assert!((p50 - (0.01 + 0.09 * 40.0 / 80.0)).abs() < 1e-12, "{p50}");
        // rank 99 falls in (0.1, 1] holding 10, 9 past its start.
        let p99 = quantile(0.99, &buckets).unwrap();
        assert!((p99 - (0.1 + 0.9 * 9.0 / 10.0)).abs() < 1e-12, "{p99}");
        // The first bucket interpolates from 0.
        let first = [(1.0, 10.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.5, &first), Some(0.5));
        // A rank in the +Inf bucket answers the highest finite bound.
        let tail = [(1.0, 1.0), (2.0, 2.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.99, &tail), Some(2.0));
    }

    #[test]
    fn quantile_is_none_without_data_or_an_inf_bucket() {
        assert_eq!(quantile(0.5, &[]), None);
        assert_eq!(quantile(0.5, &[(f64::INFINITY, 5.0)]), None);
        assert_eq!(quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.5, &[(1.0, 3.0), (2.0, 5.0)]), None);
        assert_eq!(quantile(1.5, &[(1.0, 3.0), (f64::INFINITY, 5.0)]), None);
    }

    #[test]
    fn merging_keeps_bounds_sorted_and_non_monotonic_counts_are_evened() {
        let mut merged = vec![(1.0, 4.0), (f64::INFINITY, 4.0)];
        merge(&mut merged, &[(0.5, 2.0), (1.0, 1.0), (f64::INFINITY, 1.0)]);
        assert_eq!(merged, [(0.5, 2.0), (1.0, 5.0), (f64::INFINITY, 5.0)]);
        // The second bound's count below the first's counts as the first's.
        let uneven = [(1.0, 10.0), (2.0, 8.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.5, &uneven), Some(0.5));
    }
}
