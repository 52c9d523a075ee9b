//! A real local HTTP receiver for webhook tests: records every request (headers and body)
//! and answers from a script of responses (then 200s).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What to answer: status, extra headers, and a delay before answering.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer { status, headers: Vec::new(), delay: Duration::ZERO }
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub script: Arc<Mutex<VecDeque<Answer>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let r = Receiver { url, got: Arc::default(), script: Arc::default() };
        let r2 = r.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let r3 = r2.clone();
                std::thread::spawn(move || r3.serve(stream));
            }
        });
        r
    }

    /// Queues answers for the next requests (after them: 200).
    pub fn then(&self, answers: &[Answer]) {
        self.script.lock().unwrap().extend(answers.iter().cloned());
    }

    fn serve(&self, stream: std::net::TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end().to_string();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let answer = self.script.lock().unwrap().pop_front().unwrap_or(Answer::status(200));
            self.got.lock().unwrap().push(Received {
                headers,
                body: String::from_utf8_lossy(&body).to_string(),
                at: std::time::Instant::now(),
            });
            std::thread::sleep(answer.delay);
            let extra: String = answer.headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
            let resp = format!("HTTP/1.1 {} X\r\ncontent-length: 2\r\n{extra}\r\nok", answer.status);
            if out.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }

    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Seqs of the event deliveries received so far (test POSTs left out), in arrival order.
    pub fn seqs(&self) -> Vec<u64> {
        self.requests().iter().filter_map(|r| r.json()["seq"].as_u64()).collect()
    }

    /// Waits (bounded) until `pred` holds for the received seqs.
    pub fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&[u64]) -> bool) -> Vec<u64> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.seqs();
            if pred(&s) {
                return s;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}; received {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
