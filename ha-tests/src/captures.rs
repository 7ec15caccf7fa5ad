//! Packet captures in a lab's namespaces (`tcpdump`), read back for the
//! connections a drill found broken: who sent what to whom, with
//! link-layer addresses.

use crate::l2lab::Lab;

/// One `tcpdump` per namespace, writing to a file until `stop`.
#[derive(Debug)]
pub struct Captures {
    /// Namespace, its capture file, the capturing process.
    running: Vec<(String, String, std::process::Child)>,
    /// What could not be started, said in the report.
    pub errors: Vec<String>,
}

impl Captures {
    /// Starts capturing on `eth0` of each namespace what `filter` (a
    /// tcpdump expression, word by word) matches, into
    /// `/tmp/<name>-<namespace>.pcap`.
    pub fn start(lab: &Lab, namespaces: &[String], name: &str, filter: &[&str]) -> Captures {
        let mut c = Captures {
            running: Vec::new(),
            errors: Vec::new(),
        };
        for ns in namespaces {
            let file = format!("/tmp/{name}-{ns}.pcap");
            let mut args = vec![
                "tcpdump", "-Z", "root", "-i", "eth0", "-nn", "-s", "96", "-B", "8192", "-U", "-w",
                &file,
            ];
            args.extend_from_slice(filter);
            match lab.spawn(ns, &args) {
                Ok(child) => c.running.push((ns.clone(), file, child)),
                Err(e) => c.errors.push(format!("{ns}: {e:#}")),
            }
        }
        c
    }

    /// Stops every capture (so each file is complete).
    pub fn stop(&mut self) {
        for (_, _, child) in &mut self.running {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
        }
        for (_, _, child) in &mut self.running {
            let _ = child.wait();
        }
    }

    /// Each namespace's packets to or from port `port` (at most `lines`),
    /// with link-layer addresses and Unix times.
    pub fn packets_of(&self, lab: &Lab, port: u16, lines: usize) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (ns, file, _) in &self.running {
            let text = match lab.exec(
                "c",
                &[
                    "tcpdump",
                    "-Z",
                    "root",
                    "-nn",
                    "-tt",
                    "-e",
                    "-r",
                    file,
                    "port",
                    &port.to_string(),
                ],
            ) {
                Ok(t) => t,
                Err(e) => format!("tcpdump -r: {e:#}"),
            };
            let packets: Vec<&str> = text.lines().take(lines).collect();
            out.insert(ns.clone(), serde_json::json!(packets));
        }
        serde_json::Value::Object(out)
    }

    /// Deletes the capture files.
    pub fn remove(self) {
        for (_, file, _) in &self.running {
            let _ = std::fs::remove_file(file);
        }
    }
}
