//! Which requests of a connection are open, so an idle keep-alive connection can be
//! closed without cutting one in flight: a service and body wrapper that count them.

use super::*;

/// Which requests of one connection are open, and since when none is.
pub(crate) struct Activity {
    state: Mutex<ActivityState>,
    /// Woken when the last open request ends.
    pub(crate) changed: Notify,
}

pub(crate) struct ActivityState {
    open: usize,
    served: u64,
    idle_since: Instant,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                open: 0,
                served: 0,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // The state is a few integers updated in one step: usable even after a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request has reached the service; it is open until its response body is dropped.
    fn begin(self: &Arc<Self>) -> OpenRequest {
        let mut s = self.lock();
        s.open += 1;
        s.served += 1;
        OpenRequest(Arc::clone(self))
    }

    pub(crate) fn served_any(&self) -> bool {
        self.lock().served > 0
    }

    /// When the connection may be closed for idleness: `None` while a request is open.
    pub(crate) fn idle_deadline(
        &self,
        first_request_by: Instant,
        idle: Duration,
    ) -> Option<Instant> {
        let s = self.lock();
        match (s.open, s.served) {
            (0, 0) => Some(first_request_by),
            (0, _) => Some(s.idle_since + idle),
            _ => None,
        }
    }
}

/// One open request of a connection (see [`Activity::begin`]).
pub(crate) struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let last = {
            let mut s = self.0.lock();
            s.open -= 1;
            if s.open == 0 {
                s.idle_since = Instant::now();
            }
            s.open == 0
        };
        if last {
            self.0.changed.notify_one();
        }
    }
}

/// A service that marks each request open from the call until its response body is
/// dropped (so a long SSE stream or download is not "idle").
pub(crate) struct Tracked<S> {
    pub(crate) inner: S,
    pub(crate) activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        TrackedFuture {
            open: Some(self.activity.begin()),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The response future of [`Tracked`]; hands the open-request mark to the body.
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        open: Option<OpenRequest>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.inner.poll(cx));
        let open = this.open.take();
        Poll::Ready(resp.map(|r| r.map(|inner| TrackedBody { inner, _open: open })))
    }
}

pin_project! {
    /// A response body that keeps its request marked open until it is dropped.
    pub(crate) struct TrackedBody<B> {
        #[pin]
        inner: B,
        _open: Option<OpenRequest>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
