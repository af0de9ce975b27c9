//! The MCP servers the end-to-end tests talk to (`mod servers;` beside `mod support;`):
//!
//! * `demo`: the demo server in-process, rmcp's client to it, and Node.js scripts;
//! * `everything`: the official TypeScript reference server, as a child process;
//! * `gateway`: `mcp-policy gateway` in-process in front of either.

#![allow(dead_code, unreachable_pub)]

pub mod demo;
pub mod everything;
pub mod gateway;
