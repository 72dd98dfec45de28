//! What the tests read a scrape with: sample names, and values by name and labels, over the
//! platform's one Prometheus text parser (`feedline::metrics::text`, which the gateway's ops
//! page reads scrapes with too).

use std::collections::BTreeSet;

use feedline::metrics::text::label_set;
pub use feedline::metrics::text::{Sample, samples};

/// The distinct sample names of `text` (a histogram gives its `_bucket`, `_sum` and `_count`).
pub fn names(text: &str) -> BTreeSet<String> {
    samples(text).map(|s| s.name.to_owned()).collect()
}

/// The value of the first sample `name` that has every one of `labels`, whatever their order.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .find(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
}

/// The sum of the samples `name` that have every one of `labels` (0 when there are none):
/// what a counter is across the label sets a test does not care about.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .filter(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
        .sum()
}

/// [`sum`] for a series written as Prometheus does, `name` or `name{label="value",...}`.
pub fn metric(text: &str, series: &str) -> f64 {
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, label_set(rest).expect("a label set").0),
        None => (series, Vec::new()),
    };
    let labels: Vec<(&str, &str)> = labels.iter().map(|(n, v)| (*n, v.as_str())).collect();
    sum(text, name, &labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP a_seconds x\n# TYPE a_seconds histogram\n\
        a_seconds_bucket{le=\"1\",service=\"s\"} 1\na_seconds_sum{service=\"s\"} 0.5\n\
        a_seconds_count{service=\"s\"} 1\nb 2 1700000000000\n\n\
        c_total{b=\"2\",a=\"1\",service=\"s\"} 3\nc_total{service=\"s\",b=\"1\",a=\"1\"} 4\n\
        d{path=\"/a,b\",msg=\"say \\\"hi\\\"\"} 5\nnot a sample\n";

    #[test]
    fn names_are_read_out_of_a_scrape() {
        assert_eq!(
            names(SCRAPE).into_iter().collect::<Vec<_>>(),
            [
                "a_seconds_bucket",
                "a_seconds_count",
                "a_seconds_sum",
                "b",
                "c_total",
                "d"
            ]
        );
    }

    #[test]
    fn a_value_is_found_by_name_and_labels_in_any_order() {
        assert_eq!(value(SCRAPE, "a_seconds_count", &[]), Some(1.0));
        assert_eq!(
            value(SCRAPE, "b", &[]),
            Some(2.0),
            "a timestamp is not the value"
        );
        assert_eq!(
            value(SCRAPE, "c_total", &[("a", "1"), ("b", "1")]),
            Some(4.0)
        );
        assert_eq!(value(SCRAPE, "c_total", &[("b", "2")]), Some(3.0));
        assert_eq!(value(SCRAPE, "c_total", &[("b", "3")]), None);
        assert_eq!(value(SCRAPE, "c", &[]), None, "a name is matched whole");
        assert_eq!(value(SCRAPE, "d", &[("msg", "say \"hi\"")]), Some(5.0));
        assert_eq!(value(SCRAPE, "d", &[("path", "/a,b")]), Some(5.0));
    }

    #[test]
    fn sums_add_up_the_matching_series() {
        assert_eq!(sum(SCRAPE, "c_total", &[]), 7.0);
        assert_eq!(sum(SCRAPE, "c_total", &[("a", "1")]), 7.0);
        assert_eq!(sum(SCRAPE, "c_total", &[("b", "1")]), 4.0);
        assert_eq!(sum(SCRAPE, "absent", &[]), 0.0);
        assert_eq!(metric(SCRAPE, "c_total"), 7.0);
        assert_eq!(metric(SCRAPE, "c_total{b=\"2\"}"), 3.0);
        assert_eq!(metric(SCRAPE, "c_total{a=\"1\",b=\"1\"}"), 4.0);
    }
}
