//! dstack-gateway: the one public entry for every CVM (DESIGN §3, UPSTREAM
//! §10). Clients reach an app by TLS SNI `<app-id|instance-id>[-<port>[s|g]].<base>`
//! or a custom domain named by a `_dstack-app-address` TXT record; the
//! gateway terminates TLS (or passes it through) and relays the bytes to the
//! CVM over a userspace WireGuard tunnel. CVMs register over RA-TLS; replicas
//! share state through etcd.
#![forbid(unsafe_code)]

pub mod admin;
pub mod certs;
pub mod config;
pub mod http;
pub mod metrics;
pub mod node;
pub mod pages;
pub mod pp;
pub mod proxy;
pub mod registry;
pub mod relay;
pub mod route;
pub mod rpc;
pub mod sni;
pub mod state;
pub mod tee;
pub mod txt;
pub mod webhook;
