//! A fake Kubernetes API server inside a test namespace, over plain http:
//! it answers every request with the current (status, body) and records
//! the request heads (tests/kube.rs, tests/deploy.rs).

use super::in_netns;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fake API server: answers every request with the current (status,
/// body) and records the request heads.
pub struct FakeApi {
    answer: Arc<Mutex<(u16, &'static [u8])>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApi {
    pub fn start(ns: &str, listen: SocketAddr, status: u16, body: &'static [u8]) -> Self {
        let answer = Arc::new(Mutex::new((status, body)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (answer, requests, stop) = (answer.clone(), requests.clone(), stop.clone());
            in_netns(ns, move || {
                let listener = TcpListener::bind(listen).expect("bind the fake API");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                let deadline = Instant::now() + Duration::from_secs(180);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    requests.lock().unwrap().push(head);
                    let (status, body) = *answer.lock().unwrap();
                    let mut stream = reader.into_inner();
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(body);
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("fake API ready");
        Self {
            answer,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn answer(&self, status: u16, body: &'static [u8]) {
        *self.answer.lock().unwrap() = (status, body);
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
