// The waiting room's page (docs/CONTRACT.md, "The waiting-room page"): joins
// the campaign's room for the user of the token, follows the place, issues
// once admitted, follows the result. Every state shows in #room's data-state.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {};
  for (const id of ['room', 'title', 'detail', 'figures', 'position', 'ahead', 'wait', 'pulse',
    'clock', 'issue', 'note']) ui[id] = $(id);
  const campaign = decodeURIComponent(location.pathname.split('/')[2] || '');
  const api = '/api/v1/campaigns/' + encodeURIComponent(campaign);
  const origins = document.querySelector('meta[name="room-page-origins"]').content.split(' ')
    .filter(Boolean);
  const embedded = window.parent !== window;
  const TOKEN = 'coupon-room:token';
  const JOIN = 'coupon-room:join:' + campaign;
  const ISSUE = 'coupon-room:issue:' + campaign;

  // sessionStorage, or memory where the browser refuses it.
  const memory = {};
  const store = {
    get(k) { try { const v = sessionStorage.getItem(k); if (v !== null) return v; } catch (e) { /* memory */ } return memory[k] || null; },
    set(k, v) { memory[k] = v; try { sessionStorage.setItem(k, v); } catch (e) { /* memory */ } },
    del(k) { delete memory[k]; try { sessionStorage.removeItem(k); } catch (e) { /* memory */ } },
  };
  const newKey = () => Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, '0')).join('');
  const keyOf = (name) => store.get(name) || (store.set(name, newKey()), store.get(name));

  let token = null;
  let rate = 0;        // positions admitted per second
  let startsAt = 0;    // ms
  let phase = null;    // the next poll: 'join', 'look', 'coupon'; null: none
  let due = null;
  let timer = null;
  let running = false;
  let failures = 0;
  let polls = 0;       // /coupons/me reads while deferred
  let issuing = false;
  let mine = null;     // this page's issue reply
  let estimate = null; // when the user should be admitted (ms)
  let clock = null;    // {until, text(ms left)}
  let joined = false;
  let admittedUntil = 0;
  let told = null;

  // --- time and numbers, in the user's locale and time zone ---
  const num = (n) => Number(n).toLocaleString();
  const hms = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const day = new Intl.DateTimeFormat(undefined, { weekday: 'short', month: 'short', day: 'numeric',
    hour: '2-digit', minute: '2-digit', timeZoneName: 'short' });
  function span(ms) {
    const s = Math.ceil(ms / 1000);
    if (s <= 1) return 'any moment';
    if (s < 60) return s + ' s';
    const m = Math.ceil(s / 60);
    return m < 60 ? m + ' min' : Math.floor(m / 60) + ' h' + (m % 60 ? ' ' + (m % 60) + ' min' : '');
  }
  const mmss = (ms) => { const s = Math.ceil(ms / 1000); return Math.floor(s / 60) + ':' + String(s % 60).padStart(2, '0'); };

  // --- what the page shows ---
  function view(state, title, detail, o = {}) {
    ui.room.dataset.state = state;
    document.title = title + ' · Waiting room'; // seen from other tabs too
    if (ui.title.textContent !== title) ui.title.textContent = title;
    if (ui.detail.textContent !== detail) ui.detail.textContent = detail;
    ui.figures.hidden = !o.figures;
    ui.pulse.hidden = !o.pulse;
    ui.issue.hidden = !o.button;
    ui.note.hidden = !o.note;
    clock = o.clock || null;
    if (!o.figures) estimate = null;
    tick();
    if (state !== told) { told = state; tell({ type: 'coupon-room:state', state }); }
  }
  function tick() {
    const now = Date.now();
    if (estimate !== null) ui.wait.textContent = span(estimate - now);
    ui.clock.hidden = !clock;
    if (clock) ui.clock.textContent = clock.text(Math.max(0, clock.until - now));
  }
  setInterval(tick, 1000);

  // --- polling: one request at a time, paused while the tab is hidden ---
  function schedule(next, ms) { phase = next; due = Date.now() + Math.max(0, ms); arm(); }
  function stop() { phase = null; due = null; clearTimeout(timer); }
  function arm() {
    clearTimeout(timer);
    if (due !== null && !document.hidden) timer = setTimeout(run, Math.max(0, due - Date.now()));
  }
  async function run() {
    if (running || !phase) return;
    const step = phase;
    due = null;
    running = true;
    try { await steps[step](); } finally { running = false; }
  }
  document.addEventListener('visibilitychange', arm);

  async function call(method, path, key) {
    const headers = { Accept: 'application/json', Authorization: 'Bearer ' + token };
    if (key) headers['Idempotency-Key'] = key;
    try {
      const res = await fetch(api + path, { method, headers, cache: 'no-store', credentials: 'omit',
        signal: AbortSignal.timeout && AbortSignal.timeout(15000) });
      let body = null;
      try { body = await res.json(); } catch (e) { /* a proxy's error page */ }
      const after = Number(res.headers.get('Retry-After'));
      return { status: res.status, body: body || {}, after: after > 0 ? after * 1000 : 0,
        replayed: res.headers.get('Idempotent-Replayed') === 'true' };
    } catch (e) {
      return { status: 0, body: {}, after: 0 };
    }
  }
  const busy = (r) => r.body.outcome === 'request_in_progress';
  const transient = (r) => r.status === 0 || r.status === 429 || r.status >= 500 || !r.body.outcome;
  // Exponential back-off with jitter, never sooner than Retry-After.
  function backoff(r) {
    failures += 1;
    const ceiling = Math.min(20000, 1000 * 2 ** Math.min(failures - 1, 5));
    return Math.max(r.after, Math.round(ceiling / 2 + Math.random() * ceiling / 2));
  }
  function unavailable(r, ms) {
    const kept = admittedUntil > Date.now() ? "You're admitted until " + hms.format(admittedUntil) + '. '
      : joined ? 'Your place in line is kept. ' : '';
    view('unavailable', r.status === 429 ? 'Lots of people are here right now' : "We can't reach the sale right now",
      kept + 'This page keeps trying by itself.', { figures: !ui.figures.hidden && !issuing,
        clock: { until: Date.now() + ms, text: (l) => l > 0 ? 'Trying again in ' + Math.ceil(l / 1000) + ' s' : 'Trying again…' } });
  }
  // A reply that is neither a place nor a coupon: true when handled. No
  // answer, 429, 5xx or a proxy's page is asked again later.
  function refused(r, step) {
    if ((r.status >= 200 && r.status < 300) || (r.status === 410 && r.body.state)) return false;
    if (busy(r)) schedule(step, Math.max(r.after, 500));
    else if (r.status === 401) signin(true);
    else if (r.status === 404 || r.status === 400) notFound(r.body.outcome);
    else if (!transient(r) && r.status !== 408) {
      end('error', "This page can't go on", 'Open the link the shop gave you again (' + r.body.outcome + ').');
    } else { const ms = backoff(r); unavailable(r, ms); schedule(step, ms); }
    return true;
  }

  const steps = {
    async join() {
      const r = await call('POST', '/room', keyOf(JOIN));
      if (issuing) return;
      if (r.status === 422) { store.del(JOIN); schedule('join', 0); return; }
      if (refused(r, 'join')) return;
      joined = true;
      failures = 0;
      // A replayed join is the first reply again: ask for the place now.
      if (r.replayed && r.status < 300) schedule('look', 0);
      else place(r.body);
    },
    async look() {
      const r = await call('GET', '/room/me');
      if (issuing || refused(r, 'look')) return;
      failures = 0;
      place(r.body);
    },
    async coupon() {
      const r = await call('GET', '/coupons/me');
      if (issuing || refused(r, 'coupon')) return;
      failures = 0;
      coupon(r.body);
    },
  };

  // --- the room's states ---
  function place(p) {
    admittedUntil = 0;
    if (p.admit_per_second) rate = p.admit_per_second;
    if (p.starts_at) startsAt = Date.parse(p.starts_at);
    switch (p.state) {
      case 'waiting': return p.position == null ? notStarted(p) : waiting(p);
      case 'admitted': return admitted(p);
      case 'taken': return schedule('coupon', 0);
      case 'expired': return end('expired', 'Your turn has passed',
        'You were admitted but did not get the coupon in time, so your place went to the next in line.');
      case 'sold_out': return end('sold_out', 'Sold out', 'All the coupons have been given out. Thank you for waiting.');
      case 'closed': return end('closed', 'This sale is closed', 'It ended or was closed before your turn came.');
      default: // none: the room does not know this user (yet): join afresh
        store.del(JOIN);
        return schedule('join', 1000);
    }
  }
  function end(state, title, detail) { stop(); view(state, title, detail); }

  function waiting(p) {
    const ahead = p.ahead || 0;
    ui.position.textContent = num(p.position);
    ui.ahead.textContent = num(ahead);
    view('waiting', "You're in line", 'You are number ' + num(p.position) + ' in line. ' +
      (ahead ? num(ahead) + ' ahead of you.' : "You're next."), { figures: true, pulse: true, note: true });
    estimate = rate ? Date.now() + (ahead + 1) * 1000 / rate : null;
    if (estimate === null) ui.wait.textContent = '–';
    tick();
    schedule('look', Math.max(250, p.retry_after_ms || 1000));
  }

  function notStarted(p) {
    view('not_started', "The sale hasn't started yet",
      (startsAt ? 'It opens ' + day.format(startsAt) + '. ' : '') +
      "You're in: when it opens, everyone who joined before is placed in line by lottery, then admitted in turn.",
      { note: true, clock: startsAt ? { until: startsAt, text: (l) => l > 0 ? 'Opens in ' + span(l) : 'Opening…' } : null });
    schedule('look', Math.max(250, p.retry_after_ms || 1000));
  }

  function admitted(p) {
    const until = admittedUntil = Date.parse(p.admitted_until) || Date.now() + 60000;
    const first = ui.room.dataset.state !== 'admitted';
    view('admitted', "It's your turn", 'Get your coupon before ' + hms.format(until) + '.',
      { button: true, clock: { until, text: (l) => 'Time left: ' + mmss(l) } });
    ui.issue.disabled = false;
    ui.issue.removeAttribute('aria-busy');
    ui.issue.textContent = 'Get my coupon';
    if (first) ui.issue.focus();
    // An issue this tab started before a reload: finish it, under its key.
    if (store.get(ISSUE)) return issue();
    schedule('look', Math.min(5000, Math.max(250, until - Date.now())));
  }

  // --- issuing: one Idempotency-Key per campaign and tab, kept until refused ---
  async function issue() {
    if (issuing) return;
    issuing = true;
    stop();
    const key = keyOf(ISSUE);
    const busyView = () => {
      view('issuing', 'Getting your coupon…', 'One moment. Reloading this page will not ask twice.', { button: true });
      ui.issue.disabled = true;
      ui.issue.setAttribute('aria-busy', 'true');
      ui.issue.textContent = 'Getting your coupon…';
    };
    busyView();
    for (;;) {
      const r = await call('POST', '/issue', key);
      const outcome = r.body.outcome;
      if (r.status === 202) { issuing = false; failures = 0; mine = r.body; polls = 0; return issued(); }
      if (busy(r)) { await sleep(Math.max(r.after, 500)); continue; }
      if (transient(r)) { const ms = backoff(r); unavailable(r, ms); await sleep(ms); busyView(); continue; }
      issuing = false;
      failures = 0;
      if (outcome === 'duplicate') return schedule('coupon', 0);
      store.del(ISSUE); // refused: nothing was taken; a later try is a new request
      if (r.status === 401) return signin(true);
      if (r.status === 404) return notFound(outcome);
      if (outcome === 'sold_out' || outcome === 'closed') return place({ state: outcome });
      return schedule('look', 0); // not_admitted, not_open: the room says why
    }
  }
  const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
  ui.issue.addEventListener('click', issue);

  function issued() {
    admittedUntil = 0;
    if (mine.outcome === 'accepted') {
      view('issued', 'You got the coupon', 'Coupon ' + mine.coupon_id + ' is yours.');
    } else {
      view('pending', 'Confirming your coupon…', 'Your request is in: this takes a moment.', { pulse: true });
    }
    schedule('coupon', 1000);
  }

  // --- the coupon: from this page's issue, or a slot the user already had ---
  function coupon(c) {
    const at = c.issued_at ? ', issued ' + hms.format(Date.parse(c.issued_at)) : '';
    const again = () => { polls += 1; schedule('coupon', Math.min(10000, 1000 * 1.5 ** polls)); };
    if (mine) {
      if (c.state === 'issued') return end('issued', 'You got the coupon', 'Coupon ' + c.coupon_id + ' is yours' + at + '.');
      if (c.state === 'pending' || c.state === 'queued') return again();
    } else {
      if (c.state === 'issued') return end('taken', 'You already have this coupon', 'Coupon ' + c.coupon_id + at + '.');
      if (c.state === 'pending' || c.state === 'queued') {
        view('taken', 'You already have a coupon on its way', 'It is being confirmed (' + c.state + ').', { pulse: true });
        return again();
      }
    }
    end('rejected', "We couldn't give you the coupon",
      c.outcome === 'sold_out' ? 'The coupons ran out before your request went through.'
        : 'Your request did not go through' + (c.outcome ? ' (' + c.outcome.replace(/_/g, ' ') + ').' : '.'));
  }

  function notFound(outcome) {
    end('not_found', outcome === 'no_waiting_room' ? 'This sale has no waiting room' : 'No sale here',
      outcome === 'no_waiting_room' ? 'Go back to the shop to get the coupon.' : 'Check the link the shop gave you.');
  }

  function signin(expired) {
    stop();
    view('signin', expired ? 'Your sign-in has expired' : 'Sign-in needed', embedded
      ? 'Waiting for the shop to sign you in…' : 'Open this page again from the link the shop gave you.');
    tell({ type: 'coupon-room:need-token', campaign });
  }

  // --- the token: from the address's fragment, or from the framing shop ---
  function tell(message) {
    if (embedded) for (const origin of origins) window.parent.postMessage(message, origin);
  }
  window.addEventListener('message', (e) => {
    if (!embedded || e.source !== window.parent || !origins.includes(e.origin)) return;
    const d = e.data;
    if (!d || d.type !== 'coupon-room:token' || typeof d.token !== 'string' || !d.token) return;
    token = d.token;
    store.set(TOKEN, token);
    if (ui.room.dataset.state === 'signin') { failures = 0; schedule(joined ? 'look' : 'join', 0); }
  });

  const fragment = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (fragment) {
    history.replaceState(null, '', location.pathname + location.search);
    if (fragment[1]) store.set(TOKEN, decodeURIComponent(fragment[1]));
  }
  token = store.get(TOKEN);
  tell({ type: 'coupon-room:ready', campaign });
  if (token) {
    view('loading', 'Connecting…', 'Finding your place in line.');
    schedule('join', 0);
  } else signin(false);
})();
