//! Following a job to its end: a progress bar on a terminal, plain log lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use myco_runtime::queue::JobView;

/// Shows a job's progress while it runs.
#[derive(Debug)]
pub enum Progress {
    Bar(indicatif::ProgressBar),
    Log { last: Instant, last_line: String },
    Quiet,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(1);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg:>10} [{bar:40}] {pos}/{len} ({elapsed}, eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            Progress::Bar(bar)
        } else {
            Progress::Log {
                last: Instant::now() - Duration::from_secs(60),
                last_line: String::new(),
            }
        }
    }

    pub fn update(&mut self, job: &JobView) {
        let p = job.progress;
        match self {
            Progress::Bar(bar) => {
                if p.items_total > 0 {
                    bar.set_length(p.items_total);
                    bar.set_position(p.items_done);
                    bar.set_message(format!("{} {}", job.state, rate(job)));
                } else {
                    bar.set_length(u64::from(p.total));
                    bar.set_position(u64::from(p.done + p.failed));
                    bar.set_message(job.state.to_string());
                }
            }
            Progress::Log { last, last_line } => {
                let line = if p.items_total > 0 {
                    format!(
                        "job {} {}: {}/{} files, {}",
                        job.id,
                        job.state,
                        p.items_done,
                        p.items_total,
                        rate(job)
                    )
                } else {
                    format!(
                        "job {} {}: {}/{} done, {} failed",
                        job.id, job.state, p.done, p.total, p.failed
                    )
                };
                // The end is reported by the caller.
                if !job.state.is_terminal()
                    && line != *last_line
                    && last.elapsed() >= Duration::from_secs(2)
                {
                    eprintln!("{line}");
                    *last = Instant::now();
                    *last_line = line;
                }
            }
            Progress::Quiet => {}
        }
    }

    pub fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// "1234 chunks, 56.7 chunks/s, eta 1m 5s" for a job whose children report outputs.
pub fn rate(job: &JobView) -> String {
    let p = job.progress;
    let mut out = format!("{} chunks", p.outputs);
    if let Some(r) = p.outputs_per_s {
        out.push_str(&format!(", {r:.1} chunks/s"));
    }
    if let Some(eta) = p.eta_s {
        out.push_str(&format!(
            ", eta {}",
            humantime::format_duration(Duration::from_secs(eta))
        ));
    }
    out
}
