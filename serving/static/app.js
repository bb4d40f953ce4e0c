// The chat page. Plain JavaScript, no build step; only the public API:
//   POST /v1/chat/completions (streamed; `user` = a per-browser id kept in localStorage)
//   POST /v1/feedback         (thumbs, pairwise, corrected answers: the wire shapes of DESIGN.md)
//   GET  /v1/adapters         (which adapter version serves, for the header and the model menu)
// When the server wants a credential (RLHF_AUTH=api-key or jwt) an API call answers 401: the page
// then asks for an API key or token once, keeps it in localStorage, sends it as
// `Authorization: Bearer ...` on every call, and asks again when it is refused (revoked, expired).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  user: browserUserId(),
  history: [],      // [{role, content}] sent with the next request
  busy: false,
  base: null,       // base model name, from /v1/adapters
  active: null,     // the active version (null: the base model) and the canary, from /v1/adapters
  canary: null,
  blindShare: 0,    // share of compare turns that put active and canary side by side, unlabelled
};

function browserUserId() {
  const KEY = "rlhf-user-id";
  let id = localStorage.getItem(KEY);
  if (!id) {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    id = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem(KEY, id);
  }
  return id;
}

// ------------------------------------------------------------------------------ credential
const CREDENTIAL = "rlhf-credential";
let asking = null; // the open question for a credential, shared by every call refused meanwhile

function askForCredential(reason) {
  if (!asking) {
    asking = new Promise((resolve) => {
      const form = $("auth");
      $("auth-reason").textContent = reason;
      $("auth-key").value = "";
      form.hidden = false;
      $("auth-key").focus();
      form.onsubmit = (ev) => {
        ev.preventDefault();
        const value = $("auth-key").value.trim();
        if (!value) return;
        localStorage.setItem(CREDENTIAL, value);
        form.hidden = true;
        asking = null;
        resolve();
      };
    });
  }
  return asking;
}

// fetch() with the stored credential; on 401, ask for one and try again.
async function api(path, init = {}) {
  for (;;) {
    const credential = localStorage.getItem(CREDENTIAL);
    const headers = { ...(init.headers || {}) };
    if (credential) headers.Authorization = "Bearer " + credential;
    const res = await fetch(path, { ...init, headers });
    if (res.status !== 401) return res;
    if (localStorage.getItem(CREDENTIAL) === credential) localStorage.removeItem(CREDENTIAL);
    const why = await errorText(res);
    await askForCredential(credential ? `refused: ${why}` : why);
  }
}

// ------------------------------------------------------------------------------ API calls
async function errorText(res) {
  try {
    const body = await res.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (_) {
    return `HTTP ${res.status}`;
  }
}

// Streams one chat completion; onDelta(choiceIndex, text) for each piece.
// Resolves to {model, rlhf} from the last chunk (rlhf carries response ids and feedback tokens).
async function streamCompletion(body, onDelta) {
  const res = await api("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, stream: true, user: state.user }),
  });
  if (!res.ok) throw new Error(await errorText(res));
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "", model = null, rlhf = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        model = chunk.model || model;
        for (const c of chunk.choices || []) {
          if (c.delta && c.delta.content) onDelta(c.index, c.delta.content);
        }
        if (chunk.rlhf) rlhf = chunk.rlhf;
      }
    }
  }
  if (!rlhf) throw new Error("the answer ended without its feedback ids");
  return { model, rlhf };
}

async function postFeedback(body) {
  const res = await api("/v1/feedback", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(await errorText(res));
  return res.json();
}

// ------------------------------------------------------------------------------ rendering
function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("data-") || k.startsWith("aria-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.appendChild(c);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function adapterLabel(adapter) {
  return adapter ? adapter : `base model${state.base ? " (" + state.base + ")" : ""}`;
}

// One answer box: the text, which adapter wrote it, and its feedback buttons.
function answerBox(turn, index, pair) {
  const msg = el("div", { class: "msg", "data-testid": "answer-text" });
  const adapter = el("span", { class: "adapter", "data-testid": "adapter", text: "…" });
  const status = el("span", { class: "done", "data-testid": "feedback-status" });
  const up = el("button", { type: "button", text: "👍 good", title: "good answer", "aria-label": "thumbs up",
                            "aria-pressed": "false", "data-testid": "thumbs-up", disabled: true });
  const down = el("button", { type: "button", text: "👎 bad", title: "bad answer", "aria-label": "thumbs down",
                              "aria-pressed": "false", "data-testid": "thumbs-down", disabled: true });
  const improve = el("button", { type: "button", text: "✏️ improve", title: "correct this answer",
                                 "data-testid": "improve", disabled: true });
  const meta = el("div", { class: "meta" }, [adapter, up, down, improve]);
  let prefer = null;
  if (pair) {
    prefer = el("button", { type: "button", text: "this one is better", "data-testid": "prefer", disabled: true });
    meta.appendChild(prefer);
  }
  meta.appendChild(status);
  const box = el("div", { class: "answer", "data-testid": "answer" }, [msg, meta]);
  const answer = { turn, index, box, msg, adapter, status, up, down, prefer, improve, text: "", ref: null,
                   adapterName: null };

  const thumbs = async (value) => {
    try {
      await postFeedback({ type: "thumbs", response_id: answer.ref.response_id,
                           feedback_token: answer.ref.feedback_token, value });
      up.setAttribute("aria-pressed", String(value === "up"));
      down.setAttribute("aria-pressed", String(value === "down"));
      status.textContent = value === "up" ? "thanks!" : "thanks, noted";
      showError("");
    } catch (e) {
      showError("feedback failed: " + e.message);
    }
  };
  up.onclick = () => thumbs("up");
  down.onclick = () => thumbs("down");
  improve.onclick = () => editInPlace(answer);
  if (prefer) prefer.onclick = () => choose(turn, index);
  return answer;
}

function ready(answer, ref, adapterName, blind) {
  answer.ref = ref;
  answer.adapterName = adapterName;
  if (blind) answer.adapter.textContent = `answer ${answer.index + 1}`; // which version: shown after the vote
  else reveal(answer);
  answer.box.dataset.responseId = ref.response_id;
  answer.up.disabled = answer.down.disabled = answer.improve.disabled = false;
  if (answer.prefer) answer.prefer.disabled = false;
}

function reveal(answer) {
  answer.adapter.textContent = adapterLabel(answer.adapterName);
  answer.box.dataset.adapter = answer.adapterName || "base";
}

// "Improve this answer": the user rewrites it in place and sends it as a demonstration; the
// conversation then goes on with the corrected answer.
function editInPlace(answer) {
  const area = el("textarea", { class: "edit", rows: 4, "data-testid": "improve-text", value: answer.text });
  const send = el("button", { type: "button", text: "send correction", "data-testid": "improve-send" });
  const cancel = el("button", { type: "button", text: "cancel", "data-testid": "improve-cancel" });
  const editor = el("div", { class: "editor" }, [area, el("div", { class: "meta" }, [send, cancel])]);
  answer.msg.hidden = true;
  answer.improve.disabled = true;
  answer.box.insertBefore(editor, answer.msg.nextSibling);
  area.focus();
  const close = () => {
    editor.remove();
    answer.msg.hidden = false;
    answer.improve.disabled = false;
  };
  cancel.onclick = close;
  send.onclick = async () => {
    const text = area.value.trim();
    if (!text || text === answer.text.trim()) return close();
    send.disabled = true;
    try {
      await postFeedback({ type: "demonstration", response_id: answer.ref.response_id,
                           feedback_token: answer.ref.feedback_token, text });
    } catch (e) {
      showError("correction failed: " + e.message);
      send.disabled = false;
      return;
    }
    showError("");
    answer.text = text;
    answer.msg.textContent = text;
    answer.box.classList.add("corrected");
    answer.status.textContent = "corrected — thanks!";
    answer.turn.historyEntry.content = text; // the conversation continues with the corrected answer
    close();
  };
}

// Pairwise: the pressed answer is chosen, the other rejected; the conversation goes on with it.
async function choose(turn, index) {
  const chosen = turn.answers[index], rejected = turn.answers[1 - index];
  try {
    await postFeedback({
      type: "pairwise",
      chosen: { response_id: chosen.ref.response_id, feedback_token: chosen.ref.feedback_token },
      rejected: { response_id: rejected.ref.response_id, feedback_token: rejected.ref.feedback_token },
    });
  } catch (e) {
    showError("feedback failed: " + e.message);
    return;
  }
  showError("");
  for (const a of turn.answers) {
    a.prefer.disabled = true;
    a.box.classList.add(a === chosen ? "chosen" : "not-chosen");
  }
  chosen.status.textContent = "preferred — thanks!";
  turn.historyEntry.content = chosen.text;
  if (turn.blind) turn.answers.forEach(reveal);
}

// ------------------------------------------------------------------------------ a turn
async function send(text) {
  const model = $("model").value || undefined;
  const compare = $("compare").checked;
  const second = $("compare-with").value;
  const twoModels = compare && second && second !== (model || "");
  const log = $("log");
  const hint = log.querySelector(".hint");
  if (hint) hint.remove();

  state.history.push({ role: "user", content: text });
  const messages = state.history.slice();
  log.appendChild(el("div", { class: "turn user" }, [el("div", { class: "msg", "data-testid": "user-text", text })]));
  const row = el("div", { class: "answers" + (compare ? " pair" : "") });
  log.appendChild(el("div", { class: "turn" }, [row]));

  // A blind turn: while a canary runs, a share of compare turns asks the active version and the
  // canary for one answer each, in random order, and shows which is which only after the vote.
  const blind = compare && !twoModels && state.canary != null && Math.random() < state.blindShare;
  const turn = { answers: [], blind, historyEntry: { role: "assistant", content: "" } };
  const count = compare ? 2 : 1;
  for (let i = 0; i < count; i++) {
    turn.answers.push(answerBox(turn, i, compare));
    row.appendChild(turn.answers[i].box);
  }
  const write = (answer) => (_, piece) => {
    answer.text += piece;
    answer.msg.textContent = answer.text;
    log.lastElementChild.scrollIntoView({ block: "end" });
  };

  if (twoModels || blind) {
    // Two versions answer the same prompt: two requests, one answer each.
    const pair = twoModels ? [model, second] : [state.active || state.base, state.canary];
    if (blind && Math.random() < 0.5) pair.reverse();
    const runs = pair.map((m, i) =>
      streamCompletion({ model: m, messages }, write(turn.answers[i])).then(({ rlhf }) =>
        ready(turn.answers[i], rlhf.responses[0], rlhf.adapter, blind)));
    await Promise.all(runs);
  } else {
    const { rlhf } = await streamCompletion({ model, messages, n: count }, (i, piece) => write(turn.answers[i])(i, piece));
    for (const ref of rlhf.responses) ready(turn.answers[ref.index], ref, rlhf.adapter);
  }
  turn.historyEntry.content = turn.answers[0].text; // until a preference says otherwise
  state.history.push(turn.historyEntry);
}

// ------------------------------------------------------------------------------ which adapter serves
let refreshing = false;
async function refreshAdapters() {
  if (refreshing) return; // still waiting (e.g. for a credential): one call at a time
  refreshing = true;
  try {
    const res = await api("/v1/adapters");
    if (!res.ok) throw new Error(await errorText(res));
    const info = await res.json();
    state.base = info.base;
    state.active = info.active;
    state.canary = info.canary;
    state.blindShare = info.blind_compare_share || 0;
    let text = `answering with ${adapterLabel(info.active)}`;
    if (info.canary) text += ` · trying ${info.canary} on ${Math.round(info.canary_fraction * 100)}% of users`;
    $("serving").textContent = text;
    $("serving").dataset.active = info.active || "base";
    const names = [info.base, ...info.data.map((a) => a.version)];
    for (const select of [$("model"), $("compare-with")]) {
      const keep = select.value;
      while (select.options.length > 1) select.remove(1);
      for (const n of names) select.appendChild(el("option", { value: n, text: n === info.base ? `${n} (base)` : n }));
      select.value = names.includes(keep) ? keep : "";
    }
  } catch (e) {
    $("serving").textContent = "serving status unavailable";
  } finally {
    refreshing = false;
  }
}

// ------------------------------------------------------------------------------ wiring
$("composer").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.busy) return;
  state.busy = true;
  $("send").disabled = true;
  $("input").value = "";
  showError("");
  try {
    await send(text);
  } catch (e) {
    showError("the answer failed: " + e.message);
    state.history.pop(); // the user message that got no answer
  } finally {
    state.busy = false;
    $("send").disabled = false;
    $("input").focus();
  }
});

$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("composer").requestSubmit();
  }
});

$("compare").addEventListener("change", () => {
  $("compare-with-label").hidden = !$("compare").checked;
});

$("new-chat").addEventListener("click", () => {
  state.history = [];
  $("log").replaceChildren();
  showError("");
});

refreshAdapters();
setInterval(refreshAdapters, 5000);
