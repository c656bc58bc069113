//! Process termination signals: RunPod (and `docker stop`) send SIGTERM, a terminal sends SIGINT.

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C only, off Unix) and logs which one arrived.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stopping only when killed");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing, then exiting"),
            _ = int.recv() => tracing::info!("SIGINT: finishing, then exiting"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C: finishing, then exiting");
    }
}
