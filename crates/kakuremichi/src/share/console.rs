//! `kakuremichi share`'s console: a local HTTP/1.1 proxy between the Agent and the app that
//! prints one line per request, as ngrok's does — time, method, path, status, milliseconds.
//! Bodies stream through untouched; WebSocket and other upgrades are bridged once the app
//! answers `101`. Nothing is kept but the line printed.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, hyper::Error>;

/// Longest path printed; longer ones are cut (the line stays one line).
const MAX_PATH: usize = 80;

/// Serves the Agent's connections on `listener`, each forwarded to `app` (`host:port`), and
/// prints a line per request with `print`.
pub async fn serve(listener: TcpListener, app: String, print: fn(&str)) {
    let app = Arc::new(app);
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let upstream = Arc::new(tokio::sync::Mutex::new(None));
            let service = hyper::service::service_fn(move |req| {
                let (app, upstream) = (app.clone(), upstream.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(forward(req, &app, &upstream, print).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .with_upgrades()
                .await;
        });
    }
}

/// One request to the app, over this connection's upstream connection (made, or made again,
/// when needed); a `502` that says why when the app does not answer.
async fn forward(
    mut req: Request<Incoming>,
    app: &str,
    upstream: &tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
    print: fn(&str),
) -> Response<Body> {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req_path(&req));
    let say = |status: u16| {
        print(&format!(
            "{}  {:<7} {:<24}  {status}  {} ms",
            time_of_day(),
            method.as_str(),
            path,
            started.elapsed().as_millis(),
        ))
    };
    let mut sender = upstream.lock().await;
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        match connect(app).await {
            Ok(s) => *sender = Some(s),
            Err(e) => {
                say(502);
                return bad_gateway(&format!("nothing answers on {app} ({e})"));
            }
        }
    }
    let Some(send) = sender.as_mut() else {
        return bad_gateway("no connection to the app");
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut answer = match send.send_request(req).await {
        Ok(a) => a,
        Err(e) => {
            *sender = None;
            say(502);
            return bad_gateway(&format!("the app at {app} failed: {e}"));
        }
    };
    let status = answer.status();
    say(status.as_u16());
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let app_upgrade = hyper::upgrade::on(&mut answer);
        *sender = None;
        tokio::spawn(async move {
            if let (Ok(a), Ok(b)) = (client_upgrade.await, app_upgrade.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
            }
        });
    }
    answer.map(BodyExt::boxed)
}

async fn connect(app: &str) -> std::io::Result<SendRequest<Incoming>> {
    let stream = TcpStream::connect(app).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn.with_upgrades());
    Ok(sender)
}

fn req_path(req: &Request<Incoming>) -> String {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut shown: String = path
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_PATH)
        .collect();
    if path.chars().count() > MAX_PATH {
        shown.push('…');
    }
    shown
}

fn bad_gateway(why: &str) -> Response<Body> {
    let text = format!("kakuremichi share: {why}\n");
    let body = Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed();
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

/// `HH:MM:SS` in UTC.
fn time_of_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt as _, StreamExt as _};
    use std::sync::Mutex;
    use tokio_tungstenite::tungstenite::Message;

    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn keep(line: &str) {
        LINES.lock().unwrap().push(line.to_string());
    }

    fn printed(needle: &str) -> bool {
        LINES.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    #[tokio::test]
    async fn requests_are_lines_bodies_and_websockets_pass_and_a_dead_app_is_a_502() {
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = app.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(kakuremichi::hello::serve(
            app,
            "console-app".into(),
            async {
                let _ = stopped.await;
            },
        ));
        let console = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", console.local_addr().unwrap());
        tokio::spawn(serve(console, app_addr, keep));

        let page = reqwest::get(format!("{base}/some/page?x=1")).await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("console-app"));
        assert!(
            printed("GET     /some/page?x=1"),
            "{:?}",
            LINES.lock().unwrap()
        );

        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{}/ws", base.replace("http", "ws")))
                .await
                .expect("a WebSocket through the console");
        ws.send(Message::text("echo me")).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text("echo me"));
        assert!(printed("/ws") && printed("  101  "));

        let _ = stop.send(());

        // Nothing listens there: a 502 that says so, and its line.
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone_addr = gone.local_addr().unwrap().to_string();
        drop(gone);
        let console = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", console.local_addr().unwrap());
        tokio::spawn(serve(console, gone_addr.clone(), keep));
        let res = reqwest::get(format!("{base}/nobody")).await.unwrap();
        assert_eq!(res.status(), 502);
        assert!(res.text().await.unwrap().contains(&gone_addr));
        assert!(printed("/nobody") && printed("  502  "));
    }
}
