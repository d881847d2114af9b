// The moderation page: the report queue (open first) with what can be done about
// each target, every action with a reason, and the audit log. The API answers 403
// to anybody but moderators and admins; the page then says so.
import { SignedOut, api, logInFirst, signedIn } from "./api.js";
import { PagedList, el, failure, say, timeElement } from "./ui.js";

const root = document.getElementById("moderation");
const REASONS = JSON.parse(root.dataset.reasons || "{}");
const pageMessage = document.getElementById("moderation-message");
const showResolved = document.getElementById("show-resolved");

const ACTION_WORDS = {
  "video.remove": "removed video", "video.restore": "restored video",
  "comment.remove": "removed comment", "comment.restore": "restored comment",
  "report.dismiss": "dismissed report", "user.ban": "banned", "user.unban": "unbanned",
  "role.set": "set the role of",
};

function targetLink(target) {
  const label = target.label || `${target.type} #${target.id}`;
  if (!target.exists) return el("span", { className: "gone", text: `${label} (deleted)` });
  let href = null;
  if (target.type === "video") href = `/watch/${target.id}`;
  else if (target.type === "comment" && target.video_id) href = `/watch/${target.video_id}`;
  else if (target.type === "user") href = `/@${target.id}`;
  return href ? el("a", { text: label, attrs: { href } }) : el("span", { text: label });
}

// One button per action this report's target allows; each posts {reason[, until]}.
function actionsFor(report) {
  const { target } = report;
  const actions = [];
  if (target.exists && (target.type === "video" || target.type === "comment")) {
    const verb = target.hidden ? "restore" : "remove";
    actions.push([`${verb === "remove" ? "Remove" : "Restore"} ${target.type}`,
      `/moderation/${target.type}s/${target.id}/${verb}`, verb === "remove" ? "danger" : ""]);
  }
  const userId = target.type === "user" ? target.id : target.owner_id;
  if (target.exists && userId) {
    const whom = target.type === "user" ? "user" : "author";
    actions.push(target.type === "user" && target.hidden
      ? [`Unban ${whom}`, `/moderation/users/${userId}/unban`, ""]
      : [`Ban ${whom}`, `/moderation/users/${userId}/ban`, "danger", true]);
  }
  if (report.status === "open") actions.push(["Dismiss report", `/moderation/reports/${report.id}/dismiss`, "ghost"]);
  return actions;
}

function reportItem(report) {
  const { target } = report;
  const item = el("li", { className: "report-item", attrs: { "data-report-id": report.id, "data-status": report.status } });
  item.append(
    el("p", { className: "report-target" },
      el("span", { className: "badge-inline", text: target.type }), " ", targetLink(target),
      target.hidden ? el("span", { className: "hint", text: target.type === "user" ? " (banned)" : " (removed)" }) : null),
    el("p", { className: "meta" },
      el("strong", { text: REASONS[report.reason] || report.reason }),
      ` \u00B7 reported by ${report.reporter_name || "a deleted account"} `, timeElement(report.created_at),
      target.open_reports > 1 ? ` \u00B7 ${target.open_reports} open reports` : "",
      report.status !== "open" ? ` \u00B7 ${report.status}` : ""),
  );
  if (report.note) item.append(el("p", { className: "report-note", text: report.note }));

  const actions = actionsFor(report);
  if (!actions.length) return item;
  const reason = el("input", { attrs: { type: "text", name: "reason", maxlength: 500, required: true,
    placeholder: "Why (kept in the log; a removed video's author sees it)", "aria-label": "Reason" } });
  const until = el("input", { attrs: { type: "datetime-local", name: "until", "aria-label": "Banned until (empty: for good)" } });
  const message = el("p", { className: "message", attrs: { role: "alert", hidden: true } });
  const row = el("div", { className: "row" });
  const form = el("form", { className: "form compact moderation-actions" }, reason, row, message);
  for (const [label, path, style, needsUntil] of actions) {
    const button = el("button", { className: `button small ${style}`.trim(), text: label, attrs: { type: "button" } });
    button.addEventListener("click", () => act(path, needsUntil ? until : null, { reason, message, form }));
    row.append(button);
  }
  if (actions.some((action) => action[3])) {
    row.append(el("label", { className: "hint until" }, "Ban until ", until));
  }
  item.append(form);
  return item;
}

async function act(path, untilInput, { reason, message, form }) {
  const why = reason.value.trim();
  if (!why) {
    say(message, "Please say why: it goes to the log.");
    reason.focus();
    return;
  }
  const body = { reason: why };
  if (untilInput && untilInput.value) body.until = new Date(untilInput.value).toISOString();
  for (const button of form.querySelectorAll("button")) button.disabled = true;
  try {
    const response = await api(path, { method: "POST", auth: true, json: body });
    if (response.ok) {
      await Promise.all([queue.reset(queuePath()), log.reset()]);
      return;
    }
    say(message, await failure(response, "That did not work."));
  } catch (error) {
    if (error instanceof SignedOut) logInFirst();
    else say(message, "The server could not be reached.");
  }
  for (const button of form.querySelectorAll("button")) button.disabled = false;
}

function logItem(entry) {
  const target = entry.target_label || `${entry.target_type} #${entry.target_id}`;
  return el("li", { className: "log-entry" },
    el("p", { className: "meta" }, timeElement(entry.at), " \u00B7 ",
      el("strong", { text: entry.actor_name || "the command line" }), " ",
      `${ACTION_WORDS[entry.action] || entry.action} `, el("span", { className: "log-target", text: target })),
    entry.reason ? el("p", { className: "log-reason", text: entry.reason }) : null);
}

function queuePath() {
  return `/moderation/reports?status=${showResolved.checked ? "all" : "open"}`;
}

const queue = new PagedList({
  list: document.getElementById("report-queue"),
  more: document.getElementById("more-reports"),
  empty: document.getElementById("no-reports"),
  path: queuePath(),
  auth: "required",
  render: reportItem,
});
const log = new PagedList({
  list: document.getElementById("audit-log"),
  more: document.getElementById("more-log"),
  empty: document.getElementById("no-log"),
  path: "/moderation/log",
  auth: "required",
  render: logItem,
});

async function start() {
  if (!signedIn()) {
    logInFirst();
    return;
  }
  try {
    await Promise.all([queue.load(), log.load()]);
  } catch (error) {
    if (error instanceof SignedOut) logInFirst();
    else say(pageMessage, error.message);
  }
}

showResolved.addEventListener("change", () => {
  queue.reset(queuePath()).catch((error) => say(pageMessage, error.message));
});
start();
