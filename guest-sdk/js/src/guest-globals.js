// Imported first by the entry build.mjs generates, so that the component's
// globals (console, Date) are made safe before any behavior code runs,
// even at its top level (component.js: installGuestGlobals). Never imported
// natively.

import { installGuestGlobals } from './component.js';

installGuestGlobals();
