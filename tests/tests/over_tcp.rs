//! The end-to-end families again, with every in-process agent on the TLS-over-TCP
//! fallback (`--transport tcp`): public URLs (GET, POST, h2c, WebSocket, large bodies),
//! terminals, logs across a cut, actions and provisioning. The same test code runs over
//! QUIC in its own binary; here [`e2e_tests::agent_transport`] answers `tcp` because of
//! this binary's name.

#[path = "actions.rs"]
mod actions;
#[path = "logs.rs"]
mod logs;
#[path = "provisioning.rs"]
mod provisioning;
#[path = "public_url.rs"]
mod public_url;
#[path = "terminal.rs"]
mod terminal;

#[test]
fn this_binary_runs_agents_over_tcp() {
    assert_eq!(
        e2e_tests::agent_transport(),
        edge_agent::dial::TransportMode::Tcp
    );
}
