//! A minimal `metrics` recorder: one atomic per counter name, labels summed. Enough to read
//! the library's counters in-process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

#[derive(Default)]
pub struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counters {
    /// Installs the process-wide recorder once and returns it.
    pub fn global() -> &'static Counters {
        static COUNTERS: OnceLock<&'static Counters> = OnceLock::new();
        COUNTERS.get_or_init(|| {
            let counters: &'static Counters = Box::leak(Box::default());
            metrics::set_global_recorder(counters).expect("no other metrics recorder");
            counters
        })
    }

    pub fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .expect("counters lock")
            .get(name)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn counter(&self, name: &str) -> Arc<AtomicU64> {
        Arc::clone(
            self.0
                .lock()
                .expect("counters lock")
                .entry(name.to_owned())
                .or_default(),
        )
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.counter(key.name()))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
