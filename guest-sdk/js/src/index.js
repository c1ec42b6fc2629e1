// Cairn guest SDK for JavaScript: write an event-sourced entity behavior as
// plain JavaScript, test it natively with `node --test`, build it into a
// WebAssembly component with ../build.mjs.
//
// - codec.js: the default codec (docs/CODEC.md), byte-identical to the Rust
//   and Python SDKs, and serde_json-shaped JSON, driven by small schemas (`t`);
// - entity.js: defineEntity, Context, Decision;
// - bridge.js: the WIT exports over bytes;
// - testkit.js: given / when / expect, natively;
// - component.js: the WIT glue (used by the component build only).

export { CodecError, decode, encode, fromJson, t, toJson } from './codec.js';
export { Context, Decision, defineEntity } from './entity.js';

export const VERSION = '0.1.0';
