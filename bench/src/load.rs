//! The load generator: N keep-alive HTTP/1.1 connections, each sending one request at a time
//! for a fixed duration, with every latency recorded in an HDR histogram.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// A server to load, and the credential header its requests carry.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The server process, whose CPU time is read around each measurement.
    pub pid: u32,
    /// The header name and its values: one token, or many that the requests take in turn.
    pub header: Option<(HeaderName, Arc<[HeaderValue]>)>,
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Responses other than 200: a misconfigured variant, reported rather than hidden.
    pub failures: u64,
    /// Server CPU time per response over the whole run (warm-up included), in microseconds:
    /// what the server spent, unlike req/s barely moved by other load on a shared machine.
    pub server_cpu_us: f64,
}

/// How hard and how long to load a target.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Loads `target` and measures the requests completed inside the measurement window.
pub async fn measure(target: &Target, load: Load) -> Sample {
    let cpu_before = cpu_ns(target.pid);
    let start = Instant::now() + load.warmup;
    let end = start + load.duration;
    let mut connections = JoinSet::new();
    for index in 0..load.connections {
        connections.spawn(connection(
            target.clone(),
            (index, load.connections),
            start,
            end,
        ));
    }
    let mut latencies = new_histogram();
    let mut failures = 0;
    let mut responses = 0;
    while let Some(done) = connections.join_next().await {
        let (histogram, failed, answered) = done.expect("load connection task");
        latencies.add(histogram).expect("merge histograms");
        failures += failed;
        responses += answered;
    }
    let cpu = cpu_ns(target.pid).saturating_sub(cpu_before);
    Sample {
        server_cpu_us: cpu as f64 / responses.max(1) as f64 / 1000.0,
        requests_per_sec: latencies.len() as f64 / load.duration.as_secs_f64(),
        p50_us: latencies.value_at_quantile(0.50) as f64 / 1000.0,
        p99_us: latencies.value_at_quantile(0.99) as f64 / 1000.0,
        failures,
    }
}

fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// CPU time of every thread of process `pid` so far, from the scheduler's own accounting
/// (`/proc/PID/task/*/schedstat`, nanoseconds).
fn cpu_ns(pid: u32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("server's /proc entry");
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Connection `index` of `count`: with many tokens, its `i`-th request carries token
/// `index + i * count`, so that the connections together go through all of them in turn.
async fn connection(
    target: Target,
    (index, count): (usize, usize),
    start: Instant,
    end: Instant,
) -> (Histogram<u64>, u64, u64) {
    let stream = TcpStream::connect(target.addr)
        .await
        .expect("connect to the benchmark server");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(driver);
    let mut latencies = new_histogram();
    let mut failures = 0;
    let mut responses = 0;
    let mut next = index;
    loop {
        let mut request = Request::get("/").header(HOST, "127.0.0.1");
        if let Some((name, values)) = &target.header {
            request = request.header(name, &values[next % values.len()]);
            next += count;
        }
        let request = request.body(Empty::<Bytes>::new()).expect("request");
        sender.ready().await.expect("connection ready");
        let sent = Instant::now();
        let response = sender.send_request(request).await.expect("response");
        let ok = response.status().is_success();
        response.into_body().collect().await.expect("response body");
        let done = Instant::now();
        responses += 1;
        if done >= end {
            return (latencies, failures, responses);
        }
        if sent >= start {
            if ok {
                let nanos = u64::try_from(done.duration_since(sent).as_nanos()).unwrap_or(u64::MAX);
                latencies.saturating_record(nanos);
            } else {
                failures += 1;
            }
        }
    }
}
