// The console page: one browser terminal into one container.
//
// It is served by console-apiserver at
//   {base}/apis/consoles.kubecube.io/v1alpha1/namespaces/{ns}/pods/{pod}/console/
// with an optional query ?container=NAME&command=ARG&command=ARG...
// It creates a ShellSession (POST .../shell), then attaches to it over SockJS
// (.../attach?{id}) speaking the JSON frames of the design's terminal protocol.
//
// For tests, window.consoleState holds the page's state (see `state` below) and
// window.term is the xterm.js Terminal.
import '@xterm/xterm/css/xterm.css';
import './style.css';
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import SockJS from 'sockjs-client';

const GROUP_VERSION = 'consoles.kubecube.io/v1alpha1';
const PING_INTERVAL_MS = 30000;
const RESIZE_DEBOUNCE_MS = 100;
const MAX_TOASTS = 4;
const MAX_PENDING_INPUT = 64 * 1024;
// The least time a SockJS transport gets to open before the client falls
// back to the next one. SockJS derives it from the /info round trip (often
// well under a second), which a WebSocket upgrade through kube-apiserver's
// aggregator on a busy machine can exceed, silently landing on xhr-streaming.
const TRANSPORT_TIMEOUT_MS = 5000;

const PAGE_PATH =
  /^(.*)\/apis\/consoles\.kubecube\.io\/v1alpha1\/namespaces\/([^/]+)\/pods\/([^/]+)\/console(?:\/.*)?$/;

const $ = (id) => document.getElementById(id);
const ui = {
  target: $('target'),
  status: $('status'),
  reconnect: $('reconnect'),
  terminal: $('terminal'),
  error: $('error'),
  errorTitle: $('error-title'),
  errorMessage: $('error-message'),
  toasts: $('toasts'),
};

function decode(segment) {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

// parsePage reads where we are from the page's own URL. The path segments are
// kept as they came (still percent-encoded) to build the API URLs.
function parsePage(loc) {
  const m = PAGE_PATH.exec(loc.pathname);
  if (!m) return null;
  const [, base, rawNS, rawPod] = m;
  const query = new URLSearchParams(loc.search);
  const podPath = `${base}/apis/${GROUP_VERSION}/namespaces/${rawNS}/pods/${rawPod}`;
  return {
    base,
    namespace: decode(rawNS),
    pod: decode(rawPod),
    container: query.get('container') || '',
    command: query.getAll('command'),
    shellURL: `${podPath}/shell`,
    attachURL: `${loc.origin}${podPath}/attach`,
  };
}

const page = parsePage(window.location);

// state is the page's state as tests see it. Unknown values are null.
//   phase: "creating" | "connecting" | "open" | "ended" | "error"
const state = {
  phase: 'creating',
  sessionID: null,
  exitCode: null,
  lastToast: null,
  error: null,
  closeCode: null,
  closeReason: null,
  // Extras: how many sessions this page started (1 on first load, +1 per
  // reconnect), and the target as parsed from the URL.
  attempt: 0,
  namespace: page ? page.namespace : null,
  pod: page ? page.pod : null,
  container: page ? page.container || null : null,
};
window.consoleState = state;

const term = new Terminal({
  cursorBlink: true,
  fontFamily: '"DejaVu Sans Mono", "Cascadia Mono", Menlo, Consolas, "Liberation Mono", monospace',
  fontSize: 14,
  scrollback: 5000,
  theme: {
    background: '#0d1117',
    foreground: '#d0d7de',
    cursor: '#58a6ff',
    cursorAccent: '#0d1117',
    selectionBackground: '#264f78',
  },
});
const fit = new FitAddon();
term.loadAddon(fit);
term.open(ui.terminal);
window.term = term;

// conn is the current session's connection; null when there is none.
let conn = null;
let generation = 0;
let pendingInput = '';

function setPhase(phase, text) {
  state.phase = phase;
  document.body.dataset.phase = phase;
  ui.status.textContent = text;
  ui.status.title = text;
  ui.reconnect.hidden = !(phase === 'ended' || phase === 'error') || !page;
}

function showTarget() {
  const name = `${state.namespace}/${state.pod}`;
  ui.target.textContent = state.container ? `${name} (${state.container})` : name;
  document.title = `${state.pod} · console`;
}

function showError(title, message) {
  ui.errorTitle.textContent = title;
  ui.errorMessage.textContent = message;
  ui.error.hidden = false;
}

function toast(message) {
  const text = String(message ?? '');
  state.lastToast = text;
  const item = document.createElement('div');
  item.className = 'toast';
  item.dataset.testid = 'toast';
  item.setAttribute('role', 'alert');
  const body = document.createElement('span');
  body.className = 'toast-text';
  body.dataset.testid = 'toast-text';
  body.textContent = text;
  const close = document.createElement('button');
  close.type = 'button';
  close.className = 'toast-close';
  close.dataset.testid = 'toast-dismiss';
  close.setAttribute('aria-label', 'Dismiss');
  close.textContent = '×';
  close.addEventListener('click', () => item.remove());
  item.append(body, close);
  ui.toasts.append(item);
  while (ui.toasts.children.length > MAX_TOASTS) ui.toasts.firstElementChild.remove();
}

function clearToasts() {
  ui.toasts.replaceChildren();
}

function send(frame) {
  if (conn && conn.open) conn.sock.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
}

function sendResize(force) {
  if (!conn || !conn.open) return;
  const { rows, cols } = term;
  if (!force && rows === conn.rows && cols === conn.cols) return;
  conn.rows = rows;
  conn.cols = cols;
  send({ Op: 'resize', Rows: rows, Cols: cols });
}

function refit() {
  try {
    fit.fit();
  } catch {
    // Not laid out (e.g. zero size): keep the current size.
  }
}

// teardown drops the current connection without touching the UI; its
// callbacks become no-ops.
function teardown() {
  if (!conn) return;
  clearInterval(conn.ping);
  const { sock } = conn;
  conn = null;
  try {
    sock.close();
  } catch {
    // already closed
  }
}

async function start() {
  teardown();
  const gen = ++generation;
  state.attempt = gen;
  Object.assign(state, {
    sessionID: null,
    exitCode: null,
    lastToast: null,
    error: null,
    closeCode: null,
    closeReason: null,
  });
  pendingInput = '';
  ui.error.hidden = true;
  clearToasts();
  term.reset();
  setPhase('creating', 'Creating session…');
  term.focus();

  const spec = {};
  if (page.container) spec.container = page.container;
  if (page.command.length > 0) spec.command = page.command;
  let res;
  let text;
  try {
    res = await fetch(page.shellURL, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ apiVersion: GROUP_VERSION, kind: 'ShellSession', spec }),
    });
    text = await res.text();
  } catch (err) {
    if (gen !== generation) return;
    failCreate('Network error', `Could not reach the server: ${err && err.message ? err.message : err}`);
    return;
  }
  if (gen !== generation) return;

  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: handled below
  }
  if (!res.ok) {
    failCreate(...describeFailure(res, body, text));
    return;
  }
  const id = body && body.status && body.status.id;
  if (typeof id !== 'string' || id === '') {
    failCreate(`${res.status} ${res.statusText || 'OK'}`, 'The server did not return a session ID.');
    return;
  }
  if (body.spec && typeof body.spec.container === 'string' && body.spec.container) {
    state.container = body.spec.container;
    showTarget();
  }
  state.sessionID = id;
  connect(gen, id);
}

// describeFailure turns a failed creation into [title, message]; the body
// is a Kubernetes Status when it comes from an API server.
function describeFailure(res, body, text) {
  if (body && body.kind === 'Status') {
    const code = body.code || res.status;
    const reason = body.reason || res.statusText || 'Error';
    return [`${code} ${reason}`, body.message || text.trim()];
  }
  const title = `${res.status} ${res.statusText || 'Error'}`;
  const type = res.headers.get('Content-Type') || '';
  const trimmed = (text || '').trim();
  if (type.includes('html') || trimmed.startsWith('<')) {
    return [title, 'The server answered with an HTML page instead of a session (is the sign-in still valid?).'];
  }
  if (trimmed === '') return [title, 'The server answered with an empty body.'];
  return [title, trimmed.length > 500 ? `${trimmed.slice(0, 500)}…` : trimmed];
}

function failCreate(title, message) {
  state.error = `${title}: ${message}`;
  setPhase('error', `Error: ${state.error}`);
  showError(title, message);
}

function connect(gen, id) {
  setPhase('connecting', 'Connecting…');
  let sock;
  try {
    sock = new SockJS(`${page.attachURL}?${id}`, null, { timeout: TRANSPORT_TIMEOUT_MS });
  } catch (err) {
    failCreate('Connection failed', String(err && err.message ? err.message : err));
    return;
  }
  const c = { sock, gen, open: false, rows: 0, cols: 0, ping: 0 };
  conn = c;
  const current = () => conn === c && gen === generation;

  sock.onopen = () => {
    if (!current()) return;
    c.open = true;
    send({ Op: 'bind', SessionID: id });
    refit();
    sendResize(true);
    if (pendingInput) {
      send({ Op: 'stdin', Data: pendingInput });
      pendingInput = '';
    }
    c.ping = setInterval(() => send('ping'), PING_INTERVAL_MS);
    setPhase('open', 'Connected');
    term.focus();
  };
  sock.onmessage = (e) => {
    if (!current()) return;
    onFrame(e.data);
  };
  sock.onclose = (e) => {
    if (!current()) return;
    clearInterval(c.ping);
    conn = null;
    pendingInput = '';
    onClose(e.code, e.reason, c.open);
  };
}

function onFrame(data) {
  if (typeof data !== 'string' || data === 'pong') return;
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return; // not a protocol frame
  }
  if (!msg || typeof msg !== 'object') return;
  switch (msg.Op) {
    case 'stdout':
      if (typeof msg.Data === 'string') term.write(msg.Data);
      break;
    case 'toast':
      toast(msg.Data);
      break;
    case 'exit': {
      const code = Number(msg.Code);
      if (Number.isFinite(code)) state.exitCode = code;
      break;
    }
    default:
      // Unknown operations are for newer pages.
      break;
  }
}

// onClose says why the session ended. SockJS codes from the server: 1
// "Process exited" on a normal end, 2 with the error text on failure; other
// codes come from SockJS itself (1000 normal, 1006 dropped, 2000 all
// transports failed, 3000 go away...).
function onClose(code, reason, wasOpen) {
  state.closeCode = code;
  state.closeReason = reason || '';
  const exit = state.exitCode !== null ? ` (exit code ${state.exitCode})` : '';
  if (code === 1 || code === 1000) {
    setPhase('ended', `Session ended: ${reason || 'Process exited'}${exit}`);
    return;
  }
  const why = reason || 'connection closed';
  state.error = why;
  const detail = code === 2 ? '' : ` (code ${code})`;
  const lead = wasOpen ? 'Session ended' : 'Could not connect';
  setPhase('error', `${lead}: ${why}${detail}${exit}`);
}

term.onData((data) => {
  if (conn && conn.open) {
    send({ Op: 'stdin', Data: data });
  } else if ((state.phase === 'creating' || state.phase === 'connecting') && pendingInput.length < MAX_PENDING_INPUT) {
    // Typed ahead: sent right after bind.
    pendingInput += data;
  }
});
term.onResize(() => sendResize(false));

let resizeTimer = 0;
function scheduleRefit() {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(refit, RESIZE_DEBOUNCE_MS);
}
window.addEventListener('resize', scheduleRefit);
if (typeof ResizeObserver === 'function') new ResizeObserver(scheduleRefit).observe(ui.terminal);
window.addEventListener('pagehide', teardown);

ui.reconnect.addEventListener('click', () => {
  start();
});

refit();
if (page) {
  showTarget();
  start();
} else {
  ui.target.textContent = 'console';
  const message =
    'Open this page at …/apis/consoles.kubecube.io/v1alpha1/namespaces/NAMESPACE/pods/POD/console/';
  state.error = `Unrecognized URL: ${message}`;
  setPhase('error', state.error);
  showError('Unrecognized URL', message);
}
