//! The kernel's IPVS connection synchronisation between members
//! (`[dataplane.connection_sync]`, docs/connections.md): the sysctls it
//! needs and the sync daemons, master and backup, started over the IPVS
//! generic netlink family and kept across restarts of lb-node.

use tracing::info;

use super::msg::{self, SyncDaemon};
use super::socket::{self, IpvsError, IpvsSocket};

/// The sync daemons `sync` asks for: a master (this member's connections
/// out) and a backup (the others' in), both on the same interface, group
/// and port.
pub fn wanted_sync_daemons(sync: &crate::config::ConnectionSync) -> [SyncDaemon; 2] {
    [msg::daemon_state::MASTER, msg::daemon_state::BACKUP].map(|state| SyncDaemon {
        state,
        interface: sync.interface.clone(),
        sync_id: u32::from(sync.sync_id),
        // The kernel's message size (a packet's worth): the master sends a
        // message once the next connection does not fit in it, or after
        // 2 s. One connection per message changed nothing measurable in
        // the lab's rolling restart (docs/connections.md).
        max_len: None,
        group: Some(sync.group),
        port: Some(sync.port),
        ttl: Some(1),
    })
}

/// Whether a running daemon is the one wanted (the kernel reports its
/// defaults for what was not set; those are compared only when set).
fn same_daemon(running: &SyncDaemon, wanted: &SyncDaemon) -> bool {
    running.state == wanted.state
        && running.interface == wanted.interface
        && running.sync_id == wanted.sync_id
        && (running.group.is_none() || running.group == wanted.group)
        && (running.port.is_none() || running.port == wanted.port)
}

/// Sets the sync sysctls and makes the running daemons the wanted ones:
/// one left by an earlier run with the same settings is kept (its
/// connections go on syncing across a restart of lb-node), one with other
/// settings is replaced.
pub fn start(
    socket: &mut IpvsSocket,
    sync: &crate::config::ConnectionSync,
) -> Result<(), IpvsError> {
    let refresh = sync.refresh.as_secs().to_string();
    super::sysctls::set_sysctl_list(&[
        // Sent again at each state change and this often with traffic, so
        // a member that (re)joins has every busy connection within it.
        ("net/ipv4/vs/sync_refresh_period", refresh.as_str()),
        // A connection picked up mid-flow (after a takeover) has no window
        // history: judged liberally rather than marked invalid (which
        // would skip the translation and let the backend reset it).
        ("net/netfilter/nf_conntrack_tcp_be_liberal", "1"),
        // A segment of a connection no member synced is scheduled rather
        // than dropped: with the `mh` scheduler (Maglev hashing, the same
        // table on every member) it goes to the backend that has it.
        ("net/ipv4/vs/sloppy_tcp", "1"),
        ("net/ipv4/vs/sloppy_sctp", "1"),
    ]);
    let running = socket.sync_daemons()?;
    for wanted in wanted_sync_daemons(sync) {
        let role = if wanted.state == msg::daemon_state::MASTER {
            "master"
        } else {
            "backup"
        };
        match running.iter().find(|d| d.state == wanted.state) {
            Some(d) if same_daemon(d, &wanted) => {
                info!(role, interface = %d.interface, sync_id = d.sync_id, "IPVS connection sync running (kept from an earlier run)");
                continue;
            }
            Some(d) => {
                info!(role, interface = %d.interface, sync_id = d.sync_id, "IPVS connection sync running with other settings; restarting it");
                socket.stop_sync_daemon(wanted.state)?;
            }
            None => {}
        }
        socket.start_sync_daemon(&wanted).map_err(|e| match e {
            IpvsError::Kernel(errno) => IpvsError::Io(format!(
                "cannot start the IPVS connection sync {role} on {} (dataplane.connection_sync): {}",
                wanted.interface,
                socket::errno_text(errno)
            )),
            other => other,
        })?;
        info!(role, interface = %wanted.interface, sync_id = wanted.sync_id, group = ?wanted.group, port = ?wanted.port, "IPVS connection sync started");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> crate::config::ConnectionSync {
        crate::config::ConnectionSync {
            interface: "eth0".into(),
            sync_id: 7,
            group: std::net::Ipv4Addr::new(224, 0, 0, 81),
            port: 8848,
            refresh: std::time::Duration::from_secs(2),
        }
    }

    #[test]
    fn a_master_and_a_backup_with_the_clusters_settings_are_wanted() {
        let [master, backup] = wanted_sync_daemons(&config());
        assert_eq!(master.state, msg::daemon_state::MASTER);
        assert_eq!(backup.state, msg::daemon_state::BACKUP);
        for d in [&master, &backup] {
            assert_eq!((d.interface.as_str(), d.sync_id), ("eth0", 7));
            assert_eq!(
                (d.group, d.port, d.ttl),
                (Some(config().group), Some(8848), Some(1))
            );
        }
    }

    #[test]
    fn a_daemon_left_running_is_kept_only_with_the_same_settings() {
        let [master, _] = wanted_sync_daemons(&config());
        // As a dump reports it: the kernel's message size, no TTL.
        let running = SyncDaemon {
            max_len: Some(1472),
            ttl: None,
            ..master.clone()
        };
        assert!(same_daemon(&running, &master));
        // A kernel that reports no group or port (before 4.3) is not
        // told apart by them.
        let old_kernel = SyncDaemon {
            group: None,
            port: None,
            ..master.clone()
        };
        assert!(same_daemon(&old_kernel, &master));
        for other in [
            SyncDaemon {
                sync_id: 8,
                ..master.clone()
            },
            SyncDaemon {
                interface: "eth1".into(),
                ..master.clone()
            },
            SyncDaemon {
                port: Some(9000),
                ..master.clone()
            },
            SyncDaemon {
                state: msg::daemon_state::BACKUP,
                ..master.clone()
            },
        ] {
            assert!(!same_daemon(&other, &master), "{other:?}");
        }
    }
}
