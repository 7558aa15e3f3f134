//! In-memory pair driver: an agent and a gateway control loop exchanging bytes through
//! buffers, exercising framing, negotiation and heartbeats without any IO.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use protocol::{
    negotiate, ControlMessage, ErrorCode, Frame, Heartbeat, HeartbeatEvent, StreamHeader,
    MAX_CONTROL_FRAME, SUPPORTED_VERSIONS,
};

/// One direction of a stream: bytes written by one side, read by the other, delivered in
/// awkward small pieces to exercise `Incomplete` handling.
#[derive(Default)]
struct Pipe {
    wire: BytesMut,
    rx: BytesMut,
}

impl Pipe {
    fn send(&mut self, msg: &ControlMessage) {
        msg.to_frame().encode(&mut self.wire);
    }

    /// Moves up to `n` bytes across the wire and decodes whatever is complete.
    fn deliver(&mut self, n: usize) -> Vec<ControlMessage> {
        let n = n.min(self.wire.len());
        let chunk = self.wire.split_to(n);
        self.rx.extend_from_slice(&chunk);
        let mut out = Vec::new();
        loop {
            match Frame::decode(&mut self.rx, MAX_CONTROL_FRAME) {
                Ok(f) => out.push(ControlMessage::from_frame(&f).unwrap()),
                Err(protocol::DecodeError::Incomplete) => break,
                Err(e) => panic!("decode: {e}"),
            }
        }
        out
    }
}

fn gateway_answer(hello: &ControlMessage, ours: &[u16]) -> ControlMessage {
    let ControlMessage::Hello { versions, .. } = hello else {
        panic!("expected hello")
    };
    match negotiate(ours, versions) {
        Ok(version) => ControlMessage::Welcome {
            version,
            capabilities: vec!["http".into()],
            device: "0123456789abcdef0123456789abcdef".into(),
            heartbeat_interval_ms: 5000,
        },
        Err(e) => ControlMessage::Error {
            code: ErrorCode::VersionMismatch,
            message: e.to_string(),
        },
    }
}

#[test]
fn hello_welcome_and_heartbeats_byte_by_byte() {
    // The stream header comes first on the wire.
    let mut header = BytesMut::new();
    StreamHeader::Control.encode(&mut header).unwrap();
    assert_eq!(
        StreamHeader::decode(&mut header).unwrap(),
        StreamHeader::Control
    );
    assert!(!header.has_remaining());

    let mut up = Pipe::default();
    let mut down = Pipe::default();
    up.send(&ControlMessage::hello("test"));
    let mut got = Vec::new();
    while got.is_empty() {
        got = up.deliver(1);
    }
    let welcome = gateway_answer(&got[0], SUPPORTED_VERSIONS);
    down.send(&welcome);
    let got = down.deliver(usize::MAX);
    assert!(matches!(got[0], ControlMessage::Welcome { version: 1, .. }));

    // Heartbeats flow both ways on the agent's schedule; the gateway acks each.
    let t0 = Instant::now();
    let mut hb = Heartbeat::new(t0, Duration::from_secs(5), Duration::from_secs(15));
    let mut now = t0;
    for expected in 1..=3u64 {
        now = hb.deadline();
        let Some(HeartbeatEvent::Send(seq)) = hb.poll(now) else {
            panic!("expected a heartbeat")
        };
        assert_eq!(seq, expected);
        up.send(&ControlMessage::Heartbeat { seq });
        let msgs = up.deliver(3);
        let msgs = [msgs, up.deliver(usize::MAX)].concat();
        let ControlMessage::Heartbeat { seq } = msgs[0] else {
            panic!()
        };
        down.send(&ControlMessage::HeartbeatAck { seq });
        assert_eq!(
            down.deliver(usize::MAX),
            vec![ControlMessage::HeartbeatAck { seq }]
        );
        hb.on_received(now);
    }
    // Then the gateway goes silent: the agent declares it dead after the timeout.
    let mut dead = false;
    for _ in 0..10 {
        now = hb.deadline();
        if hb.poll(now) == Some(HeartbeatEvent::Dead) {
            dead = true;
            break;
        }
    }
    assert!(dead);
    assert!(now - t0 >= Duration::from_secs(15 + 15));
}

#[test]
fn version_mismatch_is_reported_clearly() {
    let hello = ControlMessage::Hello {
        versions: vec![7, 8],
        capabilities: vec![],
        agent_version: "future".into(),
        instance: None,
        keep_alive_ms: None,
    };
    let answer = gateway_answer(&hello, SUPPORTED_VERSIONS);
    let ControlMessage::Error { code, message } = answer else {
        panic!("expected an error")
    };
    assert_eq!(code, ErrorCode::VersionMismatch);
    assert!(message.contains("we speak [1]"), "{message}");
    assert!(message.contains("[7, 8]"), "{message}");
}
