//! Asks for an IPv4 address by broadcast ARP at a fixed rate, as a client
//! on the segment would (iputils arping cannot go below one second here).
//!
//!   arp-probe INTERFACE SENDER_IP TARGET_IP[,TARGET_IP...] INTERVAL_MS
//!
//! Runs until killed. Used by the L2 lab inside its client namespace.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [interface, sender, target, interval] = args.as_slice() else {
        anyhow::bail!("usage: arp-probe INTERFACE SENDER_IP TARGET_IP INTERVAL_MS");
    };
    let sender: Ipv4Addr = sender.parse().context("SENDER_IP")?;
    let targets: Vec<Ipv4Addr> = target
        .split(',')
        .map(|t| t.parse().context("TARGET_IP"))
        .collect::<anyhow::Result<_>>()?;
    let interval = Duration::from_millis(interval.parse().context("INTERVAL_MS")?);
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| &i.name == interface)
        .with_context(|| format!("no interface {interface}"))?;
    let mac = iface.mac.context("no MAC")?.octets();
    let config = pnet_datalink::Config {
        promiscuous: false,
        ..Default::default()
    };
    let pnet_datalink::Channel::Ethernet(mut tx, _rx) = pnet_datalink::channel(&iface, config)?
    else {
        anyhow::bail!("not an Ethernet interface");
    };
    let frames: Vec<Vec<u8>> = targets
        .iter()
        .map(|t| lb_node::announce::frames::arp_request(mac, sender, *t))
        .collect();
    loop {
        for frame in &frames {
            if let Some(Err(e)) = tx.send_to(frame, None) {
                eprintln!("arp-probe: {e}");
            }
        }
        std::thread::sleep(interval);
    }
}
