// guest-globals.js for a component built with `build.mjs --console`: the
// engine's stdio is linked (wasi:cli/stdout and stderr, which the host
// captures into the node's log), so console output is kept; the clock is
// made deterministic as in guest-globals.js. Never imported natively.

import { installGuestGlobals } from './component.js';

installGuestGlobals({ keepConsole: true });
