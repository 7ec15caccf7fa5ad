//! The drills' steady stream of acknowledged writes through the admin
//! API (backend weights 1, 2, 3, ...), and how a member's copy of the
//! last one is read back.
//!
//! Must not: import a drill. The drills import this one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use proto::admin::v1 as pb;

/// Writes backend weights 1, 2, 3, ... through whichever member leads, at
/// `rate` per second, until stopped; remembers the last acknowledged and
/// the last attempted value, and counts the writes no member acknowledged.
pub(crate) struct Writer {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU32>,
    attempted: Arc<AtomicU32>,
    unacknowledged: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub(crate) fn start(
        endpoints: Vec<String>,
        rate: u32,
        service: &'static str,
        backend: &'static str,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(AtomicU32::new(0));
        let attempted = Arc::new(AtomicU32::new(0));
        let unacknowledged = Arc::new(AtomicU32::new(0));
        let (s, ack, att, unack) = (
            stop.clone(),
            acknowledged.clone(),
            attempted.clone(),
            unacknowledged.clone(),
        );
        let task = tokio::spawn(async move {
            let mut weight = 0u32;
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
            while !s.load(Ordering::SeqCst) {
                weight += 1;
                att.store(weight, Ordering::SeqCst);
                let mut written = false;
                'endpoints: for e in &endpoints {
                    let Ok(channel) = tonic::transport::Channel::from_shared(e.clone()) else {
                        continue;
                    };
                    let Ok(channel) = channel
                        .connect_timeout(Duration::from_millis(200))
                        .timeout(Duration::from_secs(2))
                        .connect()
                        .await
                    else {
                        continue;
                    };
                    let request = pb::SetBackendOverrideRequest {
                        service: service.into(),
                        backend: backend.into(),
                        action: Some(pb::set_backend_override_request::Action::Weight(weight)),
                    };
                    if pb::admin_client::AdminClient::new(channel)
                        .set_backend_override(request)
                        .await
                        .is_ok()
                    {
                        ack.store(weight, Ordering::SeqCst);
                        written = true;
                        break 'endpoints;
                    }
                }
                if !written {
                    unack.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(interval).await;
            }
        });
        Writer {
            stop,
            acknowledged,
            attempted,
            unacknowledged,
            task,
        }
    }

    /// The writes so far that no member acknowledged.
    pub(crate) fn unacknowledged(&self) -> u32 {
        self.unacknowledged.load(Ordering::SeqCst)
    }

    pub(crate) async fn finish(self) -> (u32, u32) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        (
            self.acknowledged.load(Ordering::SeqCst),
            self.attempted.load(Ordering::SeqCst),
        )
    }
}

/// The override weight of backend `address:port` of `service`, as the
/// member behind `client` holds it.
pub(crate) async fn override_weight(
    mut client: pb::admin_client::AdminClient<tonic::transport::Channel>,
    service: &str,
    address: [u8; 4],
    port: u32,
) -> anyhow::Result<Option<u32>> {
    let r = client
        .list_services(pb::ListServicesRequest {
            name: service.into(),
        })
        .await?
        .into_inner();
    Ok(r.overrides.iter().find_map(|o| match o.action {
        Some(proto::state::v1::backend_override::Action::Weight(w))
            if o.port == port && o.address == address =>
        {
            Some(w)
        }
        _ => None,
    }))
}
