//! A tiny HTTP/1.0 server and client for the kernel lab, where busybox's
//! (statically linked against glibc) crash on name-service lookups.
//!
//!   lab-http serve ADDR:PORT NAME    answers NAME; /slow answers slow-NAME after 4 s
//!   lab-http get ADDR:PORT PATH N    N new connections, one answer (or "failed") per line

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn serve(addr: SocketAddr, name: String) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let name = name.clone();
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
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
    Ok(())
}

fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let body = out.split("\r\n\r\n").nth(1).ok_or("no body")?;
    Ok(body.trim().to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: lab-http serve ADDR:PORT NAME | lab-http get ADDR:PORT PATH COUNT";
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
