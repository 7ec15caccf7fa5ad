//! The cluster lab's kube-dns pods: `ha_tests::dns` serving a fixed zone
//! over UDP and TCP.
//!
//!   lab-dns serve ADDR:PORT NAME=IPV4...

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: lab-dns serve ADDR:PORT NAME=IPV4...";
    let (Some("serve"), Some(Ok(addr))) = (
        args.get(1).map(String::as_str),
        args.get(2).map(|a| a.parse::<SocketAddr>()),
    ) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mut zone = BTreeMap::new();
    for entry in &args[3..] {
        match entry
            .split_once('=')
            .and_then(|(n, ip)| Some((n, ip.parse::<Ipv4Addr>().ok()?)))
        {
            Some((name, ip)) => {
                zone.insert(name.trim_end_matches('.').to_ascii_lowercase(), ip);
            }
            None => {
                eprintln!("lab-dns: {entry:?} is not NAME=IPV4; {usage}");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = ha_tests::dns::serve(addr, zone).await {
        eprintln!("lab-dns: {e:#}");
        std::process::exit(1);
    }
}
