//! The MLLP listener: each connection reads frames and answers each with its ACK, in
//! order, one message at a time. Bounded everywhere: connections (a cap), frames (a size
//! limit), time (a connection that completes no message within the idle timeout — it
//! stalls, or sends bytes that never make a frame — is closed). Peers not allowed by
//! `hl7.allowed_peers` are closed at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::handle::{handle, Verdict};
use super::mllp::Mllp;
use crate::context::Context;

/// Serve `listener` until `stop`.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, stop: CancellationToken) {
    let config = &ctx.config.hl7;
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HL7 accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if !config.allows(peer.ip()) {
            tracing::warn!(%peer, "HL7 connection refused: the peer is not in hl7.allowed_peers");
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = config.max_connections, "HL7 connection refused: too many");
            continue;
        };
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tokio::spawn(async move {
            connection(stream, peer, &ctx, &stop).await;
            drop(permit);
        });
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, ctx: &Context, stop: &CancellationToken) {
    let _ = stream.set_nodelay(true);
    let config = &ctx.config.hl7;
    let idle = Duration::from_secs(config.idle_timeout_secs.max(1));
    let codec = Mllp {
        max_len: config.max_message_bytes,
    };
    let mut framed = Framed::new(stream, codec);
    let counter = &crate::metrics::get().hl7_messages;
    tracing::debug!(%peer, "HL7 connection");
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = tokio::time::timeout(idle, framed.next()) => next,
        };
        let frame = match next {
            Err(_) => {
                tracing::info!(%peer, "HL7 connection closed: no complete message within the idle timeout");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::warn!(%peer, error = %e, "HL7 connection closed");
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let (ack, verdict) = handle(ctx.index(), &frame).await;
        let result = match verdict {
            Verdict::Accepted => "accepted",
            Verdict::Duplicate => "duplicate",
            Verdict::Refused => "refused",
        };
        counter.with_label_values(&[result]).inc();
        if let Err(e) = framed.send(&ack[..]).await {
            tracing::info!(%peer, error = %e, "HL7 ACK not delivered");
            break;
        }
    }
}
