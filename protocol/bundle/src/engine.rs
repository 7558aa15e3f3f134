//! The container engine client both sides need: connecting to the Docker Engine API
//! (Docker, balenaEngine and Podman speak it) over its unix socket or TCP, and the few
//! calls a bundle needs. The agent's reconciler builds its engine wrapper on these.

use bollard::errors::Error as BollardError;
use bollard::Docker;

/// Connects to the engine at `socket` (`unix:///path` or a bare path) and negotiates
/// the API version (Docker 20.10 speaks 1.41 only).
pub async fn connect(socket: &str) -> Result<Docker, BollardError> {
    let docker = if socket.starts_with("tcp://") || socket.starts_with("http://") {
        Docker::connect_with_http(socket, 120, bollard::API_DEFAULT_VERSION)?
    } else {
        Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)?
    };
    docker.negotiate_version().await
}

/// The engine socket from `$DOCKER_HOST`, else Docker's default.
pub fn default_socket() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Whether `image` is present in the engine.
pub async fn has_image(docker: &Docker, image: &str) -> Result<bool, BollardError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether an engine error is "no such object".
pub fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}
