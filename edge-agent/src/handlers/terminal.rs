//! `Terminal` streams: a shell on a PTY on the host, or an exec with a TTY inside a
//! running service container (through the engine API).
//!
//! Frames after the header: `Data` = raw bytes both ways, `Message` = JSON
//! [`TerminalMessage`] (`resize` in, `exit`/`error` out). The session ends when the process
//! exits (an `exit` message, then the stream is finished) or when the gateway finishes or
//! resets its side (the process group gets SIGHUP, then SIGKILL, and is reaped).

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use protocol::{Frame, FrameType, TerminalHeader, TerminalMessage, TerminalTarget, MAX_DATA_FRAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, instrument, warn};

use transport::wire::{self, FrameReader, WireError};

/// How long a process gets between SIGHUP and SIGKILL when the gateway goes away.
const KILL_GRACE: Duration = Duration::from_millis(500);
/// After the process exits, output still buffered in the PTY is forwarded for at most this
/// long (a background job holding the PTY open must not keep the session alive).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(300);
/// Largest chunk read from the PTY per `Data` frame.
const READ_CHUNK: usize = 16 * 1024;

/// Terminal settings of the agent.
#[derive(Debug, Clone)]
pub struct TerminalOptions {
    /// Shell for host sessions. Default is `$SHELL`, else `/bin/sh`.
    pub shell: Option<String>,
    /// Start the host shell as a login shell (`-l`). Default is false.
    pub login: bool,
    /// Most concurrent terminal sessions on this device. Default is 4.
    pub max_sessions: usize,
    /// Container engine socket for service sessions. Default is none: the engine's
    /// default (`DOCKER_HOST` or `/var/run/docker.sock`).
    pub engine_socket: Option<PathBuf>,
}

impl Default for TerminalOptions {
    fn default() -> Self {
        Self {
            shell: None,
            login: false,
            max_sessions: 4,
            engine_socket: None,
        }
    }
}

/// The agent's terminal sessions: options plus the live-session count behind the cap.
/// One per agent, shared by all connections (the cap is per device, not per tunnel).
#[derive(Debug)]
pub struct Terminals {
    opts: TerminalOptions,
    active: Arc<AtomicUsize>,
}

/// Holds one slot of the session cap; released on drop.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Terminals {
    /// Sessions configured by `opts`.
    pub fn new(opts: TerminalOptions) -> Self {
        Self {
            opts,
            active: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Number of live sessions.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    fn acquire(&self) -> Option<Slot> {
        let max = self.opts.max_sessions;
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(&self.active)))
    }

    /// Serves one `Terminal` stream whose header payload is `map`, until it ends.
    #[instrument(skip_all, fields(target))]
    pub async fn serve(
        &self,
        mut send: transport::SendStream,
        recv: transport::RecvStream,
        map: serde_json::Map<String, serde_json::Value>,
    ) {
        let header = match TerminalHeader::from_map(&map) {
            Ok(h) => h,
            Err(e) => return refuse(&mut send, e.to_string()).await,
        };
        tracing::Span::current().record("target", header.target.as_str());
        let Some(_slot) = self.acquire() else {
            let msg = format!("too many terminal sessions ({})", self.opts.max_sessions);
            return refuse(&mut send, msg).await;
        };
        let reader = FrameReader::new(recv, MAX_DATA_FRAME);
        let outcome = match &header.target {
            TerminalTarget::Host => host_session(&self.opts, &header, &mut send, reader).await,
            TerminalTarget::Service(service) => {
                service_session(&self.opts, service, &header, &mut send, reader).await
            }
        };
        match outcome {
            Outcome::Exited(code) => {
                info!(code, "terminal session ended");
                let _ =
                    wire::write_frame(&mut send, &TerminalMessage::Exit { code }.to_frame()).await;
                let _ = send.finish();
            }
            Outcome::Failed(message) => refuse(&mut send, message).await,
            Outcome::GatewayGone => {
                info!("terminal session closed by the gateway");
                send.reset(protocol::AppErrorCode::NoError);
            }
        }
    }
}

/// How a session ended.
enum Outcome {
    /// The process exited with this status (128 + N for signal N).
    Exited(i32),
    /// The session could not start or broke; the message goes to the operator.
    Failed(String),
    /// The gateway finished or reset its side (or the tunnel went away).
    GatewayGone,
}

/// Sends an `error` message and finishes the stream.
async fn refuse(send: &mut transport::SendStream, message: String) {
    debug!(%message, "terminal session refused");
    let _ = wire::write_frame(send, &TerminalMessage::Error { message }.to_frame()).await;
    let _ = send.finish();
}

/// What the gateway sent, decoded.
enum Input {
    Bytes(Bytes),
    Resize(u16, u16),
}

/// The next input from the gateway; `None` when it went away or sent garbage.
async fn next_input(reader: &mut FrameReader) -> Option<Input> {
    loop {
        let frame = match reader.next().await {
            Ok(f) => f,
            Err(WireError::Closed) => return None,
            Err(e) => {
                debug!(error = %e, "terminal input ended");
                return None;
            }
        };
        match frame.ty {
            FrameType::Data => return Some(Input::Bytes(frame.payload)),
            FrameType::Message => match TerminalMessage::from_frame(&frame) {
                Ok(TerminalMessage::Resize { cols, rows }) => {
                    return Some(Input::Resize(cols, rows))
                }
                Ok(other) => debug!(?other, "ignoring terminal message from the gateway"),
                Err(e) => {
                    warn!(error = %e, "malformed terminal message");
                    return None;
                }
            },
        }
    }
}

fn data_frame(bytes: &[u8]) -> Frame {
    Frame::new(FrameType::Data, Bytes::copy_from_slice(bytes))
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

// ---- host: a PTY ----

async fn host_session(
    opts: &TerminalOptions,
    header: &TerminalHeader,
    send: &mut transport::SendStream,
    mut reader: FrameReader,
) -> Outcome {
    let (pty, pts) = match pty_process::open() {
        Ok(v) => v,
        Err(e) => return Outcome::Failed(format!("cannot open a PTY: {e}")),
    };
    if let Err(e) = pty.resize(pty_process::Size::new(header.rows, header.cols)) {
        return Outcome::Failed(format!("cannot size the PTY: {e}"));
    }
    let argv: Vec<String> = match &header.command {
        Some(argv) => argv.clone(),
        None => {
            let shell = opts
                .shell
                .clone()
                .or_else(|| std::env::var("SHELL").ok().filter(|s| !s.is_empty()))
                .unwrap_or_else(|| "/bin/sh".into());
            let mut v = vec![shell];
            if opts.login {
                v.push("-l".into());
            }
            v
        }
    };
    let home = std::env::var("HOME")
        .ok()
        .filter(|h| std::path::Path::new(h).is_dir())
        .unwrap_or_else(|| "/".into());
    let cmd = pty_process::Command::new(&argv[0])
        .args(&argv[1..])
        .env("TERM", &header.term)
        .current_dir(home)
        .kill_on_drop(true);
    // `spawn` makes the child a session leader with the PTY as its controlling terminal,
    // so its pid is also its process group id and session id.
    let mut child = match cmd.spawn(pts) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot start {}: {e}", argv[0])),
    };
    let sid = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32));
    info!(pid = ?child.id(), shell = %argv[0], "terminal session started");
    let (mut pty_r, mut pty_w) = pty.into_split();

    let ended = {
        // Three independent loops: gateway → PTY, PTY → gateway, and the child's exit.
        // They run concurrently so a process that does not read its input can never stall
        // its output (and the other way round).
        let input = async {
            while let Some(input) = next_input(&mut reader).await {
                match input {
                    Input::Bytes(b) => {
                        if pty_w.write_all(&b).await.is_err() {
                            // The process is gone; its exit is reported by `wait`.
                            std::future::pending::<()>().await;
                        }
                    }
                    Input::Resize(cols, rows) => {
                        if let Err(e) = pty_w.resize(pty_process::Size::new(rows, cols)) {
                            debug!(error = %e, "PTY resize failed");
                        }
                    }
                }
            }
        };
        let output = async {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match pty_r.read(&mut buf).await {
                    // EIO: every process holding the PTY's other end is gone.
                    Ok(0) | Err(_) => return true,
                    Ok(n) => {
                        if wire::write_frame(send, &data_frame(&buf[..n]))
                            .await
                            .is_err()
                        {
                            return false;
                        }
                    }
                }
            }
        };
        let wait = child.wait();
        tokio::pin!(input, output, wait);
        let mut status: Option<i32> = None;
        let mut output_done = false;
        let mut drain_until = tokio::time::Instant::now();
        loop {
            tokio::select! {
                // The gateway finished or reset its side: the session is over.
                _ = &mut input => break None,
                ok = &mut output, if !output_done => {
                    if !ok {
                        // The gateway stopped reading.
                        break None;
                    }
                    output_done = true;
                    if status.is_some() {
                        break status;
                    }
                }
                s = &mut wait, if status.is_none() => {
                    status = Some(match s {
                        Ok(s) => exit_code(s),
                        Err(e) => {
                            warn!(error = %e, "wait failed");
                            255
                        }
                    });
                    if output_done {
                        break status;
                    }
                    drain_until = tokio::time::Instant::now() + DRAIN_AFTER_EXIT;
                }
                // Output still flowing after the exit: a background job holds the PTY.
                _ = tokio::time::sleep_until(drain_until), if status.is_some() => break status,
            }
        }
    };
    match ended {
        Some(code) => {
            // Background jobs of the shell do not outlive the session.
            if let Some(sid) = sid {
                signal_session(sid, rustix::process::Signal::HUP);
            }
            Outcome::Exited(code)
        }
        None => {
            kill_and_reap(&mut child, sid).await;
            Outcome::GatewayGone
        }
    }
}

/// SIGHUP to every process of the session (what a terminal hang-up does, but also
/// reaching background jobs, which job control puts in their own process groups), SIGKILL
/// to whatever is left after a grace period, then reap the shell so no zombie is left.
/// (Orphaned jobs are reaped by init; a process that left the session with `setsid` is
/// out of reach, as with any terminal.)
async fn kill_and_reap(child: &mut tokio::process::Child, sid: Option<rustix::process::Pid>) {
    let Some(sid) = sid else {
        let _ = child.kill().await;
        return;
    };
    signal_session(sid, rustix::process::Signal::HUP);
    let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
    signal_session(sid, rustix::process::Signal::KILL);
    let _ = child.kill().await;
    let _ = child.wait().await;
}

/// Sends `sig` to every process whose session id is `sid` (read from `/proc`).
fn signal_session(sid: rustix::process::Pid, sig: rustix::process::Signal) {
    let _ = rustix::process::kill_process_group(sid, sig);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state ppid pgrp session.
        let session = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3))
            .and_then(|s| s.parse::<i32>().ok());
        if session == Some(sid.as_raw_nonzero().get()) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, sig);
            }
        }
    }
}

// ---- service: an exec in the service's container ----

/// Why a service terminal could not reach its container; the text goes to the user.
#[derive(Debug, thiserror::Error)]
enum ContainerError {
    #[error("cannot reach the container engine: {0}")]
    Engine(bollard::errors::Error),
    #[error("cannot list containers: {0}")]
    List(bollard::errors::Error),
    #[error("no running container for service {0}")]
    NotRunning(String),
}

async fn engine(opts: &TerminalOptions) -> Result<bollard::Docker, ContainerError> {
    let docker = match &opts.engine_socket {
        Some(p) => bollard::Docker::connect_with_unix(
            &p.to_string_lossy(),
            120,
            bollard::API_DEFAULT_VERSION,
        ),
        None => bollard::Docker::connect_with_unix_defaults(),
    }
    .map_err(ContainerError::Engine)?;
    docker
        .negotiate_version()
        .await
        .map_err(ContainerError::Engine)
}

/// The id of the running container of `service` (labelled by the reconciler).
async fn container_of(docker: &bollard::Docker, service: &str) -> Result<String, ContainerError> {
    let filters = std::collections::HashMap::from([
        (
            "label".to_string(),
            vec![
                "io.edge.managed=1".to_string(),
                format!("io.edge.service-name={service}"),
            ],
        ),
        ("status".to_string(), vec!["running".to_string()]),
    ]);
    let list = docker
        .list_containers(Some(bollard::query_parameters::ListContainersOptions {
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(ContainerError::List)?;
    list.into_iter()
        .find_map(|c| c.id)
        .ok_or_else(|| ContainerError::NotRunning(service.to_string()))
}

async fn service_session(
    opts: &TerminalOptions,
    service: &str,
    header: &TerminalHeader,
    send: &mut transport::SendStream,
    mut reader: FrameReader,
) -> Outcome {
    use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
    let docker = match engine(opts).await {
        Ok(d) => d,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let container = match container_of(&docker, service).await {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let cmd = header.command.clone().unwrap_or_else(|| {
        // Most images have sh; bash when it is there.
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "if [ -x /bin/bash ]; then exec /bin/bash; else exec /bin/sh; fi".into(),
        ]
    });
    let exec = match docker
        .create_exec(
            &container,
            CreateExecOptions {
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(true),
                env: Some(vec![format!("TERM={}", header.term)]),
                cmd: Some(cmd),
                ..Default::default()
            },
        )
        .await
    {
        Ok(e) => e.id,
        Err(e) => return Outcome::Failed(format!("cannot create an exec in {service}: {e}")),
    };
    let started = docker
        .start_exec(
            &exec,
            Some(StartExecOptions {
                detach: false,
                tty: true,
                output_capacity: None,
            }),
        )
        .await;
    let (mut output, mut input) = match started {
        Ok(StartExecResults::Attached { output, input }) => (output, input),
        Ok(StartExecResults::Detached) => {
            return Outcome::Failed("the engine detached the exec".into())
        }
        Err(e) => return Outcome::Failed(format!("cannot start the exec in {service}: {e}")),
    };
    info!(%service, %container, %exec, "terminal session started in container");
    let resize = |cols: u16, rows: u16| {
        let docker = docker.clone();
        let exec = exec.clone();
        async move {
            if let Err(e) = docker
                .resize_exec(
                    &exec,
                    ResizeExecOptions {
                        height: rows,
                        width: cols,
                    },
                )
                .await
            {
                debug!(error = %e, "exec resize failed");
            }
        }
    };
    resize(header.cols, header.rows).await;

    let gone = {
        let input_loop = async {
            while let Some(i) = next_input(&mut reader).await {
                match i {
                    Input::Bytes(b) => {
                        if input.write_all(&b).await.is_err() || input.flush().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    Input::Resize(cols, rows) => resize(cols, rows).await,
                }
            }
        };
        let output_loop = async {
            while let Some(item) = output.next().await {
                match item {
                    Ok(out) => {
                        if wire::write_frame(send, &data_frame(&out.into_bytes()))
                            .await
                            .is_err()
                        {
                            return false;
                        }
                    }
                    Err(e) => {
                        debug!(error = %e, "exec output ended");
                        break;
                    }
                }
            }
            true
        };
        tokio::select! {
            // The gateway went away first.
            _ = input_loop => true,
            ok = output_loop => !ok,
        }
    };
    if gone {
        // The engine has no "kill exec" call: signal the exec's process from the host.
        if let Ok(info) = docker.inspect_exec(&exec).await {
            if let Some(pid) = info
                .pid
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                if info.running == Some(true) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::HUP);
                    tokio::time::sleep(KILL_GRACE).await;
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
        return Outcome::GatewayGone;
    }
    // The output ends a moment before the engine records the exit code.
    for _ in 0..50 {
        match docker.inspect_exec(&exec).await {
            Ok(info) if info.running == Some(false) => {
                return Outcome::Exited(info.exit_code.map(|c| c as i32).unwrap_or(255))
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Outcome::Failed(format!("cannot read the exit status: {e}")),
        }
    }
    Outcome::Failed("the exec's output ended but it is still running".into())
}
