//! The local Kafka and PostgreSQL of `feedline up` (infra/*.sh): started unless running,
//! and afterwards only what this run started is stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Which infrastructure parts this run started, so only those are stopped.
#[derive(Debug)]
pub struct Infra {
    dir: PathBuf,
    started: Vec<&'static str>,
}

impl Infra {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut started = Vec::new();
        for part in ["kafka", "postgres"] {
            let script = dir.join(format!("{part}.sh"));
            let running = std::process::Command::new("bash")
                .arg(&script)
                .arg("status")
                .output()
                .with_context(|| format!("cannot run {}", script.display()))?
                .status
                .success();
            if !running {
                started.push(part);
            }
        }
        eprintln!("starting Kafka and PostgreSQL (infra/up.sh)...");
        let status = std::process::Command::new("bash")
            .arg(dir.join("up.sh"))
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("infra/up.sh failed; see the messages above");
        }
        Ok(Infra {
            dir: dir.to_owned(),
            started,
        })
    }

    pub fn stop(&self) {
        for part in &self.started {
            let _ = std::process::Command::new("bash")
                .arg(self.dir.join(format!("{part}.sh")))
                .arg("stop")
                .status();
        }
    }
}
