//! Serving one established session: the control stream (heartbeats, targets, actions),
//! gateway-opened streams, and the move to a better transport.

use super::*;

impl Agent {
    /// Serves one established session until it ends (returning why) or the agent moves to
    /// a better transport.
    pub(super) async fn serve(&self, session: Session, tasks: &TaskTracker) -> Ended {
        let Session {
            conn,
            candidate,
            mut control_send,
            mut control_recv,
            heartbeat,
        } = session;
        // Report what this device is on every connect (the gateway shows it).
        let base_report = self.state_report(conn.remote_address());
        let report = ControlMessage::StateReport {
            state: base_report.clone(),
        };
        let mut last_reported: Option<crate::reconciler::ReconcilerStatus> = None;
        let mut report_tick = tokio::time::interval(Duration::from_millis(500));
        report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let Err(e) = wire::write_frame(&mut control_send, &report.to_frame()).await {
            // A gateway that closed the connection at once (a duplicate identity) says why.
            return Ended::Lost(match conn.close_reason() {
                Some(reason) => SessionError::Connection(reason),
                None => SessionError::Wire(e),
            });
        }
        // Spooled logs go out on their own stream, resuming where the gateway's store ends.
        // Ends with the session, or when the agent moves to another connection (whose
        // shipper resumes from the gateway's ack: nothing is lost or stored twice).
        let shipping = CancellationToken::new();
        let _stop_shipping = shipping.clone().drop_guard();
        if let Some(logs) = self.opts.logs.clone() {
            let conn = conn.clone();
            tasks.spawn(async move {
                loop {
                    let shipped = tokio::select! {
                        _ = shipping.cancelled() => return,
                        r = logs.ship(&conn) => r,
                    };
                    match shipped {
                        Ok(()) | Err(crate::logs::ShipError::Connection(_)) => return,
                        Err(_) if conn.close_reason().is_some() => return,
                        Err(e) => {
                            warn!(error = %e, "log shipping failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
        }
        // Action results come back from their tasks through this channel; only the
        // control loop writes to the control stream.
        let (results_tx, mut results_rx) = tokio::sync::mpsc::unbounded_channel::<ControlMessage>();
        // Actions run one at a time, in the order the gateway sent them.
        let (actions_tx, mut actions_rx) =
            tokio::sync::mpsc::unbounded_channel::<(String, String, serde_json::Value)>();
        let device = self.device.clone();
        let worker_results = results_tx.clone();
        let sink = self
            .opts
            .logs
            .as_ref()
            .map(|l| l.sink())
            .unwrap_or_else(crate::logs::LogSink::disabled);
        tasks.spawn(async move {
            while let Some((id, name, params)) = actions_rx.recv().await {
                run_action(
                    device.clone(),
                    id,
                    name,
                    params,
                    worker_results.clone(),
                    &sink,
                )
                .await;
            }
        });
        let control = async {
            // Heartbeats prove the control loops alive (the transport's keep-alives prove
            // the path): at the gateway's interval, kept below half the idle timeout.
            let interval = heartbeat
                .max(self.opts.keep_alive)
                .min(self.opts.idle_timeout / 2);
            let mut hb = Heartbeat::new(
                tokio::time::Instant::now().into_std(),
                interval,
                self.opts.idle_timeout,
            );
            loop {
                let deadline = tokio::time::Instant::from_std(hb.deadline());
                tokio::select! {
                    frame = control_recv.next() => {
                        let msg = ControlMessage::from_frame(&frame?).map_err(WireError::from)?;
                        hb.on_received(std::time::Instant::now());
                        match msg {
                            ControlMessage::Heartbeat { seq } => {
                                wire::write_frame(&mut control_send, &ControlMessage::HeartbeatAck { seq }.to_frame()).await?;
                            }
                            ControlMessage::HeartbeatAck { .. } => {}
                            ControlMessage::Action { id, name, params } => {
                                let _ = actions_tx.send((id, name, params));
                            }
                            ControlMessage::TargetState { target } => self.apply_gateway_target(target).await,
                            ControlMessage::Error { message, .. } => return Err(SessionError::Refused(message)),
                            other => debug!(?other, "ignoring control message"),
                        }
                    }
                    Some(result) = results_rx.recv() => {
                        wire::write_frame(&mut control_send, &result.to_frame()).await?;
                    }
                    // Update progress goes to the gateway as it changes (at most twice a second).
                    _ = report_tick.tick() => {
                        let device = self.device.as_ref().map(|(d, _)| d);
                        if let Some((d, r)) = device.and_then(|d| d.reconciler().map(|r| (d, r))) {
                            let status = r.status().borrow().clone();
                            if last_reported.as_ref() != Some(&status) {
                                let mut state = base_report.clone();
                                state["reconciler"] = serde_json::to_value(&status).expect("status serializes");
                                state["status"] = serde_json::json!(crate::local_api::DeviceInfo::status(&**d));
                                let msg = ControlMessage::StateReport { state };
                                wire::write_frame(&mut control_send, &msg.to_frame()).await?;
                                last_reported = Some(status);
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        match hb.poll(std::time::Instant::now()) {
                            Some(HeartbeatEvent::Send(seq)) => {
                                wire::write_frame(&mut control_send, &ControlMessage::Heartbeat { seq }.to_frame()).await?;
                            }
                            Some(HeartbeatEvent::Dead) => return Err(SessionError::HeartbeatTimeout),
                            None => {}
                        }
                    }
                }
            }
        };
        let accept = async {
            loop {
                let (send, recv) = conn.accept_bi().await?;
                let target = self.opts.target.clone();
                let connect_timeout = self.opts.target_connect_timeout;
                let terminals = Arc::clone(&self.terminals);
                tasks.spawn(handle_stream(
                    send,
                    recv,
                    target,
                    connect_timeout,
                    terminals,
                ));
            }
        };
        // On TCP in auto mode, QUIC is tried again in the background; once it works the
        // agent moves there.
        let probe = async {
            if self.dialer.mode != TransportMode::Auto || conn.kind() == TransportKind::Quic {
                return std::future::pending().await;
            }
            self.probe_quic(&candidate).await
        };
        // The gateway gives up on this device once it hears nothing for three of the
        // agent's keep-alives and a second (its liveness watch). Hearing nothing from the
        // gateway for twice as long (7 s), the agent gives up too and redials, rather than
        // keep a session the gateway has long dropped until its own idle timeout (15 s):
        // after a short outage, QUIC's probe backoff can leave the old connection silent
        // for seconds after the link is back. Twice, not once: on a lossy path where the
        // gateway still hears the agent, the gateway's answers can go missing for a few
        // seconds, and this side should not be the first to cut. On QUIC only: on TCP
        // the multiplexer's pings and idle timeout watch the gateway.
        let liveness = async {
            let window = (self.opts.keep_alive * 3 + Duration::from_secs(1)) * 2;
            let mut seen = conn.packets_received();
            if seen.is_none() || window >= self.opts.idle_timeout {
                return std::future::pending().await;
            }
            let mut heard = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(window / 8);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = conn.packets_received();
                if now != seen {
                    seen = now;
                    heard = tokio::time::Instant::now();
                } else if heard.elapsed() >= window {
                    return Err(SessionError::Silent(window));
                }
            }
        };
        let result: Result<(), SessionError> = tokio::select! {
            r = control => r,
            r = accept => r,
            r = liveness => r,
            next = probe => {
                info!("QUIC works again; moving the tunnel back to QUIC");
                return Ended::Moved { next, old: conn };
            }
        };
        // A stream can end a moment before the connection's close reason arrives (on TCP
        // the close message follows the stream resets): give it a moment, so that the
        // gateway's reason ("replaced", "shutting down") is the one reported.
        if matches!(result, Err(SessionError::Wire(_))) && conn.close_reason().is_none() {
            let _ = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
        }
        let err = match result {
            Err(SessionError::Wire(_)) | Ok(()) if conn.close_reason().is_some() => {
                SessionError::Connection(conn.close_reason().expect("checked"))
            }
            Err(e) => e,
            Ok(()) => SessionError::Refused("session ended".into()),
        };
        if conn.close_reason().is_none() {
            let code = match &err {
                SessionError::HeartbeatTimeout | SessionError::Silent(_) => {
                    AppErrorCode::HeartbeatTimeout
                }
                SessionError::Wire(w) => w.code(),
                _ => AppErrorCode::Internal,
            };
            conn.close(code, err.to_string().as_bytes());
        }
        Ended::Lost(err)
    }

    /// Tries QUIC to `to` (the node the TCP session is on) with backoff (2 s doubling to
    /// 30 s) until a session on it is welcomed.
    pub(super) async fn probe_quic(&self, to: &Candidate) -> Session {
        let mut endpoint = None;
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(30));
        loop {
            // At least a second apart, however the jitter falls.
            let delay = backoff.next_delay().max(Duration::from_secs(1));
            tokio::time::sleep(delay).await;
            match self.dialer.dial_quic(to, &mut endpoint).await {
                Ok(conn) => match self.handshake(conn, to.clone()).await {
                    Ok(s) => return s,
                    Err(e) => debug!(error = %e, "QUIC probe: handshake failed"),
                },
                Err(e) => debug!(error = %e, "QUIC probe failed"),
            }
        }
    }
}

/// Reads a gateway-opened stream's header and dispatches it.
pub(super) async fn handle_stream(
    mut send: transport::SendStream,
    mut recv: transport::RecvStream,
    target: String,
    connect_timeout: Duration,
    terminals: Arc<crate::handlers::terminal::Terminals>,
) {
    let header =
        match tokio::time::timeout(STREAM_HEADER_TIMEOUT, wire::read_header(&mut recv)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                // A bad stream costs only itself; the connection and other streams go on.
                warn!(error = %e, "rejecting stream with a malformed header");
                wire::reject(&mut send, &mut recv, e.code());
                return;
            }
            Err(_) => {
                warn!("rejecting stream: no header in time");
                wire::reject(&mut send, &mut recv, AppErrorCode::ProtocolError);
                return;
            }
        };
    match header {
        StreamHeader::Http(h) => {
            crate::handlers::http::serve(BiStream { send, recv }, h, &target, connect_timeout).await
        }
        StreamHeader::Terminal(map) => terminals.serve(send, recv, map).await,
        other => {
            warn!(kind = ?other.kind(), "rejecting unsupported stream kind");
            wire::reject(&mut send, &mut recv, AppErrorCode::UnsupportedStream);
        }
    }
}
