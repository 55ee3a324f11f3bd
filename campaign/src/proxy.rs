//! A TCP proxy between one node and the broker, which the nemesis uses to partition
//! that node. Two kinds of partition:
//! - **cut**: every open connection is shut down and new ones are closed at once (a
//!   link that drops: both ends see the connection end);
//! - **blackhole**: connections stay open but no byte is forwarded (a silent
//!   partition: only keep-alive timeouts notice). Bytes are held, never dropped, so a
//!   connection that survives the blackhole resumes with an intact TLS stream.
//!
//! Plain threads: one accepting, two per connection; everything stops on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
struct State {
    cut: AtomicBool,
    blackhole: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// A proxy listening on 127.0.0.1:`port` and forwarding to 127.0.0.1:`upstream`.
pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(down) = conn else { continue };
                if st.cut.load(Ordering::SeqCst) {
                    continue; // dropped here: the link is down
                }
                // During a blackhole the client's connect succeeds (the proxy accepts
                // it) but its handshake hangs, as behind a silent partition.
                while st.blackhole.load(Ordering::SeqCst) && !st.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                if let Ok(mut conns) = st.conns.lock() {
                    conns.extend([down.try_clone(), up.try_clone()].into_iter().flatten());
                }
                for (r, w) in [
                    (down.try_clone(), up.try_clone()),
                    (up.try_clone(), down.try_clone()),
                ] {
                    if let (Ok(r), Ok(w)) = (r, w) {
                        let st = st.clone();
                        std::thread::spawn(move || pump(r, w, &st));
                    }
                }
            }
        });
        Ok(Proxy {
            port,
            state,
            accept: Some(accept),
        })
    }

    /// Shuts every open connection down and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.close_all();
    }

    /// Stops forwarding (open connections hang) until [`Proxy::heal`].
    pub fn blackhole(&self) {
        self.state.blackhole.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
        self.state.blackhole.store(false, Ordering::SeqCst);
    }

    fn close_all(&self) {
        if let Ok(mut conns) = self.state.conns.lock() {
            for c in conns.drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `r` to `w`, holding bytes while the proxy is blackholed.
fn pump(mut r: TcpStream, mut w: TcpStream, st: &State) {
    let mut buf = vec![0u8; 64 << 10];
    let hold = || {
        while st.blackhole.load(Ordering::SeqCst) && !st.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    loop {
        hold();
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        hold();
        if st.cut.load(Ordering::SeqCst) || w.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = w.shutdown(Shutdown::Both);
    let _ = r.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.cut.store(true, Ordering::SeqCst);
        self.close_all();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
