//! The dashboard's budgets (issue 19): first paint of a 1,000-story phase in headless Chromium,
//! the delay from the daemon's event to the page's DOM, and the dashboard process's idle RSS.

use std::time::Duration;

use serde_json::Value;
use sticler_tests::dashboard::{Browser, Dashboard};
use sticler_tests::Daemon;

use crate::measure::{median, percentile, status_kib};
use crate::workload::Workload;

pub struct DashboardFigures {
    /// Navigation start to the graph drawn and painted, one per page load.
    pub first_paint_ms: Vec<f64>,
    /// The event's `time_ms` (taken by the daemon) to its change in the DOM, one per event.
    pub latencies_ms: Vec<f64>,
    /// The dashboard with the page open and the run over.
    pub idle_rss_kib: u64,
}

/// A `stories`-story DAG of width 8, loaded `loads` times, then run with the page following it.
pub fn measure(stories: usize, loads: usize) -> Result<DashboardFigures, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let browser = Browser::start(1280, 800).await.ok_or("chromium or chromedriver is not installed")?;
        let daemon = Daemon::start_with(&["--max-workers", "8"]);
        let records = tempfile::tempdir().map_err(|e| e.to_string())?;
        let w = Workload { stories, width: 8, iterations: 1, auto_commit: false };
        let p = w.project(records.path());
        // Shared mode: the figures are the dashboard's, the quickest run feeds them.
        p.config(w.config(true));
        let dash = Dashboard::start(&daemon, p.path());
        let page = &browser.client;
        let painted = "const m = performance.getEntriesByName('sticler-graph-painted')[0]; return m ? m.startTime : null";
        let mut first_paint_ms = vec![];
        for _ in 0..loads {
            page.goto(&dash.url).await.map_err(|e| e.to_string())?;
            let ms = browser.wait_js(Duration::from_secs(60), "the graph painted", painted).await;
            first_paint_ms.push(ms.as_f64().unwrap_or(f64::NAN));
        }
        // However the run ends (0 completed, 4 failed), its events reached the page.
        let out = daemon.ctl(&["-C", &p.path_str(), "start", "1", "--wait"]);
        if !matches!(out.status.code(), Some(0 | 4)) {
            return Err(format!("the run did not end: {:?}", out.status));
        }
        // The page has seen the last event once its run_ended arrived.
        let ended = "return window.sticler.latencies.length > 0 && document.getElementById('live').textContent.includes('run ended') || null";
        browser.wait_js(Duration::from_secs(60), "run_ended on the page", ended).await;
        let latencies: Value =
            page.execute("return window.sticler.latencies", vec![]).await.map_err(|e| e.to_string())?;
        let latencies_ms = latencies.as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
        // Idle: what it holds between events with the page connected.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle_rss_kib = status_kib(dash.pid(), "VmRSS");
        browser.quit().await;
        Ok(DashboardFigures { first_paint_ms, latencies_ms, idle_rss_kib })
    })
}

pub fn print(f: &DashboardFigures, stories: usize) {
    let paint = median(f.first_paint_ms.clone());
    println!("| dashboard first paint, {stories} stories (median of {}) | {paint:.0} ms |", f.first_paint_ms.len());
    if !f.latencies_ms.is_empty() {
        println!(
            "| dashboard event → DOM p50 / p99 / max ({} events) | {:.0} / {:.0} / {:.0} ms |",
            f.latencies_ms.len(),
            percentile(f.latencies_ms.clone(), 0.5),
            percentile(f.latencies_ms.clone(), 0.99),
            percentile(f.latencies_ms.clone(), 1.0)
        );
    }
    println!("| dashboard RSS idle (page open, run over) | {:.1} MiB |", f.idle_rss_kib as f64 / 1024.0);
}
