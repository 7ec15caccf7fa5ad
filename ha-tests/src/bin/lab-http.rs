//! A tiny HTTP/1.0 server and client for the kernel lab, where busybox's
//! (statically linked against glibc) crash on name-service lookups.
//!
//!   lab-http serve ADDR:PORT NAME    answers NAME; /slow answers slow-NAME after 4 s
//!   lab-http get ADDR:PORT PATH N    N new connections, one answer (or "failed") per line
//!   lab-http echo ADDR:PORT          sends back what it reads (round-trip times)
//!   lab-http udp ADDR:PORT N         one datagram from each of N sockets (N UDP flows)
//!   lab-http flap ADDR:PORT NAME MS SECONDS STATS
//!                                    refuses for MS, answers NAME for MS, and so on
//!                                    for SECONDS, then answers; writes the flips and
//!                                    the phases' real lengths to the file STATS

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn serve(addr: SocketAddr, name: String) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        answer(stream, name.clone());
    }
    Ok(())
}

/// Answers one connection on a thread of its own.
fn answer(mut stream: TcpStream, name: String) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let n = stream.read(&mut buf).unwrap_or(0);
        let request = String::from_utf8_lossy(&buf[..n]);
        let path = request.split_whitespace().nth(1).unwrap_or("/");
        let body = if path.starts_with("/slow") {
            std::thread::sleep(Duration::from_secs(4));
            format!("slow-{name}\n")
        } else {
            format!("{name}\n")
        };
        let answer = format!(
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(answer.as_bytes());
        // The client closes first (it knows the length), so the
        // TIME_WAIT is on its side and it never reuses a port whose
        // old connection IPVS still remembers.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.read(&mut buf);
    });
}

/// A backend that flips between refusing and answering every `every`
/// for `span`, in one process: the listening socket is closed (new
/// connections are refused, a reset) and bound again, so a phase lasts
/// what it says and not what starting a process takes in an emulated
/// guest. Connections already accepted go on. After `span` it answers
/// for good. Writes `flips N`, `longest_refusing_ms X`,
/// `longest_answering_ms Y` to `stats` when the flapping ends.
fn flap(
    addr: SocketAddr,
    name: String,
    every: Duration,
    span: Duration,
    stats: &str,
) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let (mut flips, mut longest_refusing, mut longest_answering) = (0u32, 0u128, 0u128);
    let accept_for = |listener: &TcpListener, until: std::time::Instant| {
        while std::time::Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    answer(stream, name.clone());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    };
    while started.elapsed() < span {
        // Refusing: nothing listens.
        let phase = std::time::Instant::now();
        std::thread::sleep(every);
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        longest_refusing = longest_refusing.max(phase.elapsed().as_millis());
        flips += 1;
        // Answering.
        let phase = std::time::Instant::now();
        accept_for(&listener, phase + every);
        drop(listener);
        longest_answering = longest_answering.max(phase.elapsed().as_millis());
        flips += 1;
    }
    std::fs::write(
        stats,
        format!(
            "flips {flips}\nlongest_refusing_ms {longest_refusing}\nlongest_answering_ms {longest_answering}\n"
        ),
    )?;
    serve(addr, name)
}

fn echo(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    // One write: the server reads the request with one read.
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the whole answer".into());
        }
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("no Content-Length")?;
            if body.len() >= length {
                return Ok(body.trim().to_owned());
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: lab-http serve ADDR:PORT NAME | lab-http get ADDR:PORT PATH COUNT | lab-http echo ADDR:PORT | lab-http udp ADDR:PORT COUNT | lab-http flap ADDR:PORT NAME MS SECONDS STATS";
    match args.get(1).map(String::as_str) {
        Some("serve") if args.len() == 4 => {
            let Ok(addr) = args[2].parse() else {
                eprintln!("{usage}");
                std::process::exit(2)
            };
            if let Err(e) = serve(addr, args[3].clone()) {
                eprintln!("lab-http: {e}");
                std::process::exit(1);
            }
        }
        Some("flap") if args.len() == 7 => {
            let (Ok(addr), Ok(ms), Ok(secs)) = (
                args[2].parse(),
                args[4].parse::<u64>(),
                args[5].parse::<u64>(),
            ) else {
                eprintln!("{usage}");
                std::process::exit(2)
            };
            let (every, span) = (Duration::from_millis(ms), Duration::from_secs(secs));
            if let Err(e) = flap(addr, args[3].clone(), every, span, &args[6]) {
                eprintln!("lab-http: {e}");
                std::process::exit(1);
            }
        }
        Some("echo") if args.len() == 3 => {
            let Ok(addr) = args[2].parse() else {
                eprintln!("{usage}");
                std::process::exit(2)
            };
            if let Err(e) = echo(addr) {
                eprintln!("lab-http: {e}");
                std::process::exit(1);
            }
        }
        Some("udp") if args.len() == 4 => {
            let (Ok(addr), Ok(count)) = (args[2].parse::<SocketAddr>(), args[3].parse::<u32>())
            else {
                eprintln!("{usage}");
                std::process::exit(2)
            };
            let any: SocketAddr = if addr.is_ipv6() {
                "[::]:0".parse().expect("address")
            } else {
                "0.0.0.0:0".parse().expect("address")
            };
            for _ in 0..count {
                let sent = std::net::UdpSocket::bind(any).and_then(|s| s.send_to(b"q", addr));
                if let Err(e) = sent {
                    eprintln!("lab-http: udp: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some("get") if args.len() == 5 => {
            let (Ok(addr), Ok(count)) = (args[2].parse(), args[4].parse::<u32>()) else {
                eprintln!("{usage}");
                std::process::exit(2)
            };
            for _ in 0..count {
                match get(addr, &args[3]) {
                    Ok(body) => println!("{body}"),
                    Err(e) => {
                        eprintln!("lab-http: {e}");
                        println!("failed")
                    }
                }
            }
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
