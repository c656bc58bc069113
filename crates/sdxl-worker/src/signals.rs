//! Process termination signals: RunPod (and `docker stop`) send SIGTERM, a terminal sends SIGINT.
//! The first one starts a graceful stop; a second one exits the process at once.

/// Exit code after a second signal (128 + SIGTERM, what a shell reports for a killed process).
pub const SECOND_SIGNAL_EXIT_CODE: i32 = 143;

/// Env var: how long a stopping worker lets the running job (or in-flight API requests) finish.
pub const SHUTDOWN_GRACE_ENV: &str = "SDXL_SHUTDOWN_GRACE_S";

/// `SDXL_SHUTDOWN_GRACE_S` (whole seconds), default 20 s.
pub fn shutdown_grace_from_env() -> anyhow::Result<std::time::Duration> {
    match std::env::var(SHUTDOWN_GRACE_ENV) {
        Err(_) => Ok(std::time::Duration::from_secs(20)),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(std::time::Duration::from_secs)
            .map_err(|_| {
                anyhow::anyhow!("{SHUTDOWN_GRACE_ENV} is not a whole number of seconds: {v}")
            }),
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C only, off Unix) and logs which one arrived;
/// from then on, a second SIGTERM or SIGINT exits the process at once.
pub async fn termination() {
    let Some(first) = next_signal().await else {
        return std::future::pending().await;
    };
    tracing::info!("{first}: finishing, then exiting (a second signal exits at once)");
    tokio::spawn(async {
        if let Some(second) = next_signal().await {
            tracing::warn!("{second} again: exiting now");
            std::process::exit(SECOND_SIGNAL_EXIT_CODE);
        }
    });
}

/// The name of the next termination signal; `None` when handlers cannot be installed.
async fn next_signal() -> Option<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping only when killed");
            return None;
        };
        tokio::select! {
            _ = term.recv() => Some("SIGTERM"),
            _ = int.recv() => Some("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.ok()?;
        Some("Ctrl-C")
    }
}
