//! Provisioning on the tunnel port: a device without a certificate presents a fleet
//! provisioning key and a CSR (ALPN `edge-provision/1`) and gets its signed identity.

use std::time::Duration;

use protocol::{
    AppErrorCode, DeviceUuid, Frame, FrameType, ProvisionErrorCode, ProvisionRequest,
    ProvisionResponse, MAX_CONTROL_FRAME,
};
use tracing::{info, warn};
use transport::wire::{self, FrameReader};

use super::ctx::{ConnError, TunnelCtx};
use crate::store::{now_unix, Refusal};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers one provisioning request on `conn`, then closes it.
pub(crate) async fn serve(conn: transport::Connection, ctx: &TunnelCtx) -> Result<(), ConnError> {
    let remote = conn.remote_address();
    let exchange = async {
        let (mut send, recv) = conn.accept_bi().await?;
        let mut reader = FrameReader::new(recv, MAX_CONTROL_FRAME);
        let frame = reader.next().await?;
        let response = match serde_json::from_slice::<ProvisionRequest>(&frame.payload) {
            Ok(req) => provision(ctx, req).await,
            Err(e) => refuse(
                ProvisionErrorCode::BadRequest,
                format!("malformed request: {e}"),
            ),
        };
        ctx.metrics.provisioned(&response);
        if let ProvisionResponse::Error { code, message } = &response {
            warn!(%remote, ?code, %message, "provisioning refused");
        }
        let payload = serde_json::to_vec(&response).expect("response serializes");
        wire::write_frame(&mut send, &Frame::new(FrameType::Message, payload)).await?;
        let _ = send.finish();
        // Let the answer arrive before the close does.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        Ok::<_, ConnError>(())
    };
    let result = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(ConnError::Timeout),
    };
    conn.close(AppErrorCode::NoError, b"provisioning done");
    result
}

fn refuse(code: ProvisionErrorCode, message: impl Into<String>) -> ProvisionResponse {
    ProvisionResponse::Error {
        code,
        message: message.into(),
    }
}

async fn provision(ctx: &TunnelCtx, req: ProvisionRequest) -> ProvisionResponse {
    // Secrets look like API tokens: `gw_<id>.<secret>`.
    let Some((key_id, _)) = req.key.strip_prefix("gw_").and_then(|k| k.split_once('.')) else {
        return refuse(ProvisionErrorCode::InvalidKey, "unknown provisioning key");
    };
    let uuid = match req.uuid.as_deref().map(str::parse::<DeviceUuid>) {
        None => certs::random_uuid(),
        Some(Ok(u)) => u,
        Some(Err(e)) => return refuse(ProvisionErrorCode::BadRequest, e.to_string()),
    };
    // Sign first: a bad CSR must not use up one of the key's uses.
    let cert = match ctx.ca.sign_csr(&req.csr, uuid) {
        Ok(c) => c,
        Err(e) => return refuse(ProvisionErrorCode::BadRequest, format!("invalid CSR: {e}")),
    };
    let hash = certs::sha256_hex(req.key.as_bytes());
    match ctx.store.provision(key_id, &hash, uuid, now_unix()).await {
        Ok(Ok(fleet)) => {
            info!(device = %uuid, %fleet, key = key_id, agent_version = %req.agent_version, "device provisioned");
            if let Err(e) = ctx
                .store
                .audit(
                    &format!("key:{key_id}"),
                    "device.provision",
                    uuid.as_str(),
                    &serde_json::json!({"fleet": fleet}).to_string(),
                )
                .await
            {
                warn!(error = %e, "cannot write audit entry");
            }
            ProvisionResponse::Ok {
                uuid: uuid.to_string(),
                cert,
                ca: ctx.ca.cert_pem().to_string(),
                fleet,
            }
        }
        Ok(Err(refusal)) => match refusal {
            Refusal::InvalidKey => {
                refuse(ProvisionErrorCode::InvalidKey, "unknown provisioning key")
            }
            Refusal::KeyRevoked => refuse(
                ProvisionErrorCode::KeyRevoked,
                "this provisioning key was revoked",
            ),
            Refusal::KeyExpired(at) => refuse(
                ProvisionErrorCode::KeyExpired,
                format!("this provisioning key expired {}s ago", now_unix() - at),
            ),
            Refusal::KeyUsedUp(max) => refuse(
                ProvisionErrorCode::KeyUsedUp,
                format!("this provisioning key was already used {max} time(s), its limit"),
            ),
            Refusal::UuidUnavailable(u) => refuse(
                ProvisionErrorCode::UuidUnavailable,
                format!("device {u} is already provisioned or was deleted"),
            ),
        },
        Err(e) => {
            warn!(error = %e, "store failure during provisioning");
            refuse(ProvisionErrorCode::Internal, "internal error; try again")
        }
    }
}
