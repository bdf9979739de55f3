// The opencdn web player: sign up / sign in, profiles, home rows, search with autocomplete,
// title pages, My List, and playback with hls.js (served at /vendor/hls.js from npm).
//
// Plain JavaScript, no framework, no build step. Each view is drawn into <main> from the URL
// fragment (see ROUTES). The API is the control plane's own origin, so every call is a
// same-origin fetch with the session's bearer token (control/routes/*.py; /openapi.json).
//
// Playback (POST /v1/playback) answers a per-session multivariant playlist with an
// EXT-X-CONTENT-STEERING tag (draft-pantos-hls-rfc8216bis 4.4.6.6): hls.js loads the steering
// manifest, which clones the playlist's pathway onto every ranked edge, and moves to the next
// pathway (edge) when fragments from its edge fail. Progress heartbeats renew the stream's
// lease and save the resume position; a stop is sent when the viewer leaves.
"use strict";

(() => {
  const TOKEN = "opencdn.token";
  const PROFILE = "opencdn.profile";
  const $ = (sel, root = document) => root.querySelector(sel);
  const view = $("#view");

  // -- state kept across reloads ---------------------------------------------------------
  const store = {
    get token() { return localStorage.getItem(TOKEN); },
    set token(v) { v ? localStorage.setItem(TOKEN, v) : localStorage.removeItem(TOKEN); },
    get profile() {
      try { return JSON.parse(localStorage.getItem(PROFILE)); } catch { return null; }
    },
    set profile(p) {
      p ? localStorage.setItem(PROFILE, JSON.stringify(p)) : localStorage.removeItem(PROFILE);
    },
  };

  // -- DOM helpers (text is always set as text: nothing from the API becomes HTML) --------
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function show(...nodes) {
    // Views pass optional parts as null and lists as arrays (replaceChildren would print them).
    view.replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined));
    view.focus({ preventScroll: true });
  }

  function flash(message) {
    const f = $("#flash");
    f.textContent = message || "";
    f.hidden = !message;
  }

  // -- the API -----------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body, { keepalive = false } = {}) {
    const headers = {};
    if (store.token) headers.Authorization = `Bearer ${store.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      keepalive,
      cache: "no-store",
    });
    if (r.status === 204) return null;
    const data = await r.json().catch(() => null);
    if (!r.ok) {
      const e = (data && data.error) || {};
      if (r.status === 401 && path !== "/v1/sessions") {
        // The session ended (expired, signed out elsewhere): back to the sign-in page.
        store.token = null;
        store.profile = null;
        location.hash = "#/signin";
      }
      throw new ApiError(r.status, e.code || "error", e.message || `HTTP ${r.status}`);
    }
    return data;
  }

  const q = (params) => new URLSearchParams(params).toString();
  const pid = () => store.profile && store.profile.id;

  // -- views -------------------------------------------------------------------------------
  function card(t) {
    const art = t.artwork || {};
    // Artwork paths from the origin need a signed edge URL; only absolute URLs are shown.
    const src = [art.poster, art.sprite].find((u) => typeof u === "string" && /^https?:/.test(u));
    return el("a", { class: "card", href: `#/title/${encodeURIComponent(t.id)}` },
      src ? el("img", { src, alt: "", loading: "lazy" }) : null,
      el("span", { text: t.year ? `${t.name} (${t.year})` : t.name }));
  }

  function signinView() {
    const err = el("p", { class: "muted", role: "status" });
    const submit = (path, fields) => async (ev) => {
      ev.preventDefault();
      const form = ev.target;
      const body = {};
      for (const f of fields) if (form.elements[f].value) body[f] = form.elements[f].value;
      form.querySelector("button").disabled = true;
      try {
        const s = await api("POST", path, body);
        store.token = s.token;
        store.profile = s.profile || null;
        location.hash = s.profile ? "#/home" : "#/profiles";
      } catch (e) {
        err.textContent = e.status === 429 ? "Too many attempts; wait a little." : e.message;
      } finally {
        form.querySelector("button").disabled = false;
      }
    };
    const field = (name, type, label, extra = {}) =>
      el("label", {}, label, el("input", { name, type, required: name !== "name", ...extra }));
    show(
      el("div", { class: "forms" },
        el("form", { class: "stack", id: "signin", onsubmit: submit("/v1/sessions", ["email", "password"]) },
          el("h1", { text: "Sign in" }),
          field("email", "email", "E-mail", { autocomplete: "username" }),
          field("password", "password", "Password", { autocomplete: "current-password" }),
          el("button", { class: "primary", type: "submit", text: "Sign in" })),
        el("form", { class: "stack", id: "signup", onsubmit: submit("/v1/accounts", ["email", "password", "name"]) },
          el("h1", { text: "New here?" }),
          field("email", "email", "E-mail", { autocomplete: "username" }),
          field("password", "password", "Password (8 characters or more)",
            { autocomplete: "new-password", minlength: 8 }),
          field("name", "text", "Your name (first profile)", { maxlength: 50 }),
          el("button", { type: "submit", text: "Sign up" }))),
      err);
  }

  async function profilesView() {
    const page = await api("GET", "/v1/profiles?limit=100");
    const choose = (p) => () => { store.profile = p; location.hash = "#/home"; };
    const add = async (ev) => {
      ev.preventDefault();
      const name = ev.target.elements.name.value.trim();
      if (!name) return;
      try {
        await api("POST", "/v1/profiles", { name, kids: ev.target.elements.kids.checked });
        route();
      } catch (e) { flash(e.message); }
    };
    show(
      el("h1", { text: "Who's watching?" }),
      el("div", { class: "profiles" },
        page.items.map((p) => el("button", { type: "button", class: "profile", onclick: choose(p) },
          p.kids ? `${p.name} (kids)` : p.name))),
      page.items.length < 5
        ? el("form", { class: "stack", onsubmit: add },
          el("h2", { text: "Add a profile" }),
          el("input", { name: "name", placeholder: "Name", maxlength: 50, "aria-label": "Name" }),
          el("label", {}, el("input", { type: "checkbox", name: "kids" }), " Kids profile"),
          el("button", { type: "submit", text: "Add" }))
        : null);
  }

  async function homeView() {
    const [home, list] = await Promise.all([
      api("GET", `/v1/profiles/${pid()}/home`),
      api("GET", `/v1/profiles/${pid()}/list?limit=50`),
    ]);
    const rows = [];
    if (list.items.length) rows.push({ label: "My List", titles: list.items.map((e) => e.title) });
    rows.push(...home.rows);
    show(
      el("h1", { text: `Hello, ${store.profile.name}` }),
      rows.length ? null : el("p", { class: "muted", text: "Nothing to watch yet." }),
      rows.map((r) => el("section", {},
        el("h2", { text: r.label }),
        el("div", { class: "row" }, r.titles.map(card)))));
  }

  async function listView() {
    const list = await api("GET", `/v1/profiles/${pid()}/list?limit=100`);
    show(el("h1", { text: "My List" }),
      list.items.length
        ? el("div", { class: "grid" }, list.items.map((e) => card(e.title)))
        : el("p", { class: "muted", text: "Add titles with “+ My List” on their page." }));
  }

  async function searchView(params) {
    const query = params.get("q") || "";
    $("#q").value = query;
    const page = await api("GET", `/v1/search?${q({ profile_id: pid(), q: query, limit: 48 })}`);
    show(el("h1", { text: `Results for “${query}”` }),
      page.items.length
        ? el("div", { class: "grid" }, page.items.map(card))
        : el("p", { class: "muted", text: "No match." }));
  }

  async function titleView(id) {
    const [t, resume, list] = await Promise.all([
      api("GET", `/v1/titles/${encodeURIComponent(id)}?${q({ profile_id: pid() })}`),
      api("GET", `/v1/profiles/${pid()}/resume/${encodeURIComponent(id)}`).catch(() => null),
      api("GET", `/v1/profiles/${pid()}/list?limit=100`),
    ]);
    let listed = list.items.some((e) => e.title.id === t.id);
    const listButton = el("button", { type: "button", id: "mylist" });
    const label = () => { listButton.textContent = listed ? "✓ My List" : "+ My List"; };
    label();
    listButton.addEventListener("click", async () => {
      try {
        await api(listed ? "DELETE" : "PUT", `/v1/profiles/${pid()}/list/${encodeURIComponent(t.id)}`);
        listed = !listed;
        label();
      } catch (e) { flash(e.message); }
    });
    const watch = (episode) => `#/watch/${encodeURIComponent(t.id)}` +
      (episode ? `?${q({ episode })}` : "");
    const actions = el("div", { class: "actions" });
    const next = resume && resume.next;
    if (t.kind === "movie" && t.playable) {
      const pos = next && next.position > 0 ? next.position : 0;
      actions.append(el("a", { href: watch(null) },
        el("button", { class: "primary", type: "button", id: "play",
          text: pos ? `▶ Resume from ${clock(pos)}` : "▶ Play" })));
    } else if (t.kind === "series" && next && next.episode_id) {
      actions.append(el("a", { href: watch(next.episode_id) },
        el("button", { class: "primary", type: "button", id: "play", text: "▶ Continue" })));
    }
    actions.append(listButton);
    const episodes = (t.seasons || []).map((s) => el("section", {},
      el("h2", { text: `Season ${s.season}` }),
      el("ol", { class: "episodes" }, s.episodes.map((e) => el("li", {},
        e.playable ? el("a", { href: watch(e.id), text: "▶" }) : el("span", { class: "muted", text: "–" }),
        `${e.number}. ${e.name}`)))));
    show(
      el("h1", { text: t.name }),
      el("p", { class: "muted" },
        [t.year, t.genres.join(", "), t.duration ? clock(t.duration) : null, `${t.maturity}+`]
          .filter(Boolean).join(" · ")),
      el("p", { text: t.synopsis || "" }),
      t.cast && t.cast.length ? el("p", { class: "muted", text: `With ${t.cast.join(", ")}` }) : null,
      actions,
      episodes);
  }

  function clock(s) {
    s = Math.floor(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(sec).padStart(2, "0");
    return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
  }

  // -- playback ------------------------------------------------------------------------------
  // The current play: stopped when the viewer leaves the watch view or the page.
  let current = null;

  // Exposed for people debugging in the console and for tests/test_web_player.py.
  const debug = { play: null, errors: [], fatal: [], hls: null, video: null };
  window.opencdnPlayer = debug;

  class Play {
    constructor(answer, video) {
      this.answer = answer;
      this.video = video;
      this.bytes = 0; // received since the last event (the control plane's play counts)
      this.stopped = false;
      this.hls = null;
      this.timer = null;
    }

    position() {
      return Number.isFinite(this.video.currentTime) ? this.video.currentTime : 0;
    }

    event(kind, extra = {}, opts = {}) {
      const body = { kind, ...extra };
      if (kind !== "error") {
        body.position = this.position();
        body.client_at = Date.now() / 1000;
      }
      if (this.bytes > 0) body.bytes = this.bytes;
      this.bytes = 0;
      return api("POST", `/v1/playback/${this.answer.play_id}/events`, body, opts);
    }

    start(status) {
      const a = this.answer;
      const resume = a.resume_position || 0;
      const hls = new window.Hls({
        // A short forward buffer: a viewer who stops early wastes less of the CDN's egress.
        // hls.js buffers up to maxBufferSize bytes (60 MB) whatever the duration, which at
        // low bitrates is minutes: maxMaxBufferLength caps that at 20 s. Broadband refills
        // 12 s long before it drains.
        maxBufferLength: 12,
        maxMaxBufferLength: 20,
        startPosition: resume > 0 ? resume : -1,
        contentSteeringEnabled: true,
      });
      this.hls = hls;
      debug.hls = hls;
      hls.on(window.Hls.Events.FRAG_LOADED, (_ev, data) => {
        this.bytes += (data.frag.stats && data.frag.stats.loaded) || 0;
        status.textContent = `Playing from ${new URL(data.frag.url).host}`;
      });
      hls.on(window.Hls.Events.ERROR, (_ev, data) => {
        const what = `${data.type}/${data.details}`;
        debug.errors.push(what);
        if (!data.fatal) return;
        // Content steering already moved away from failing edges: a fatal error means no
        // pathway is left (or the media cannot be decoded). Tell the control plane and stop.
        debug.fatal.push(what);
        status.textContent = `Playback failed: ${data.details}`;
        this.event("error", { error: what.slice(0, 200) }).catch(() => {});
        this.stop(false);
      });
      hls.loadSource(a.manifests.hls);
      hls.attachMedia(this.video);
      this.video.addEventListener("ended", () => this.stop(true));
      // Progress heartbeats renew the stream's lease (a third of it, as answered) and save
      // the resume position; a 402 or 404 means the stream was ended by the service.
      const every = Math.max(1, a.heartbeat_interval) * 1000;
      this.timer = setInterval(() => {
        if (this.video.paused && this.position() === 0) return;
        this.event("progress").then((r) => { if (r && r.stopped) this.stop(false); })
          .catch((e) => {
            if (e.status === 402 || e.status === 404) {
              status.textContent = e.message;
              this.stop(false);
            }
          });
      }, every);
      this.video.play().catch(() => { /* autoplay refused: the controls remain */ });
    }

    // Stop once: the last position is saved (keepalive, so it survives leaving the page).
    stop(sendStop = true) {
      if (this.stopped) return;
      this.stopped = true;
      clearInterval(this.timer);
      if (sendStop) this.event("stop", {}, { keepalive: true }).catch(() => {});
      if (this.hls) this.hls.stopLoad();
    }

    destroy() {
      this.stop(true);
      if (this.hls) this.hls.destroy();
    }
  }

  async function watchView(id, params) {
    if (!window.Hls || !window.Hls.isSupported()) {
      show(el("p", { text: "This browser cannot play HLS with Media Source Extensions, " +
        "or hls.js is not installed (run `npm ci` at the repository root)." }));
      return;
    }
    const body = { profile_id: pid(), title_id: id, device: "web" };
    const episode = params.get("episode");
    if (episode) body.episode_id = episode;
    let answer;
    try {
      answer = await api("POST", "/v1/playback", body);
    } catch (e) {
      const why = { subscription_required: "Your subscription does not allow playback.",
        stream_limit: "Too many streams are playing on this account right now." }[e.code];
      show(el("p", { text: why || e.message }),
        el("a", { href: `#/title/${encodeURIComponent(id)}`, text: "Back" }));
      return;
    }
    const video = el("video", { controls: true, playsinline: true, id: "video" });
    const status = el("p", { class: "status muted", role: "status" });
    show(el("div", { class: "player" }, video, status,
      el("a", { href: `#/title/${encodeURIComponent(id)}`, text: "← Back" })));
    current = new Play(answer, video);
    debug.play = answer;
    debug.video = video;
    current.start(status);
  }

  // -- search box with autocomplete --------------------------------------------------------
  function setupSearch() {
    const form = $("#search"), input = $("#q"), list = $("#suggest");
    let timer = null, seq = 0, active = -1;
    const close = () => { list.hidden = true; active = -1; };
    const go = (text) => {
      close();
      location.hash = `#/search?${q({ q: text })}`;
    };
    input.addEventListener("input", () => {
      clearTimeout(timer);
      const text = input.value.trim();
      if (!text || !pid()) { close(); return; }
      // Debounced; answers arriving out of order are dropped by their sequence number.
      timer = setTimeout(async () => {
        const mine = ++seq;
        try {
          const r = await api("GET", `/v1/autocomplete?${q({ profile_id: pid(), q: text, limit: 8 })}`);
          if (mine !== seq) return;
          list.replaceChildren(...r.suggestions.map((s) =>
            el("li", { role: "option", onmousedown: (ev) => { ev.preventDefault(); go(s); } }, s)));
          list.hidden = r.suggestions.length === 0;
          active = -1;
        } catch { close(); }
      }, 150);
    });
    input.addEventListener("keydown", (ev) => {
      const items = [...list.children];
      if (list.hidden || !items.length) return;
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        active = (active + (ev.key === "ArrowDown" ? 1 : -1) + items.length) % items.length;
        items.forEach((li, i) => li.setAttribute("aria-selected", String(i === active)));
      } else if (ev.key === "Escape") close();
      else if (ev.key === "Enter" && active >= 0) { ev.preventDefault(); go(items[active].textContent); }
    });
    input.addEventListener("blur", close);
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (input.value.trim()) go(input.value.trim());
    });
  }

  // -- routing -------------------------------------------------------------------------------
  const ROUTES = [
    [/^#\/signin$/, signinView, false],
    [/^#\/profiles$/, profilesView, true],
    [/^#\/home$/, homeView, true],
    [/^#\/list$/, listView, true],
    [/^#\/search$/, (m, p) => searchView(p), true],
    [/^#\/title\/([^/?]+)$/, (m) => titleView(decodeURIComponent(m[1])), true],
    [/^#\/watch\/([^/?]+)$/, (m, p) => watchView(decodeURIComponent(m[1]), p), true],
  ];

  async function route() {
    if (current) { current.destroy(); current = null; }
    flash("");
    const [path, query = ""] = location.hash.split("?");
    const signedIn = Boolean(store.token);
    $("#nav").hidden = !signedIn;
    $("#search").hidden = !(signedIn && pid());
    $("#who").textContent = store.profile ? store.profile.name : "Profile";
    if (!signedIn && path !== "#/signin") { location.hash = "#/signin"; return; }
    const found = ROUTES.find(([re]) => re.test(path));
    if (!found) { location.hash = signedIn ? (pid() ? "#/home" : "#/profiles") : "#/signin"; return; }
    const [re, draw, needsProfile] = found;
    if (needsProfile && path !== "#/profiles" && !pid()) { location.hash = "#/profiles"; return; }
    try {
      await draw(path.match(re), new URLSearchParams(query));
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return; // already sent to sign in
      if (e instanceof ApiError && e.status === 404 && path.startsWith("#/home")) {
        store.profile = null; // the profile was deleted elsewhere
        location.hash = "#/profiles";
        return;
      }
      flash(e.message || String(e));
    }
  }

  $("#signout").addEventListener("click", async () => {
    try { await api("DELETE", "/v1/sessions/current"); } catch { /* gone already */ }
    store.token = null;
    store.profile = null;
    location.hash = "#/signin";
  });
  // Leaving the page (tab closed, reload): the play's last position is saved.
  window.addEventListener("pagehide", () => { if (current) current.stop(true); });
  window.addEventListener("hashchange", route);
  setupSearch();
  route();
})();
