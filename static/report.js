// Report buttons: a small form (the reasons come from the page's #report-template)
// that posts to POST /reports. Anyone signed in may report a video, comment or user.
import { api, logInFirst, signedIn } from "./api.js";
import { el, failure, say } from "./ui.js";

export function openReport(button, targetType, targetId) {
  if (!signedIn()) {
    logInFirst();
    return;
  }
  const open = button.parentElement.querySelector(":scope > .report-form");
  if (open) {
    open.querySelector("select").focus();
    return;
  }
  const form = document.getElementById("report-template").content.firstElementChild.cloneNode(true);
  const message = form.querySelector(".message");
  const submit = form.querySelector("button[type=submit]");
  form.querySelector("[data-cancel]").addEventListener("click", () => form.remove());
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const note = String(data.get("note") || "").trim();
    submit.disabled = true;
    say(message, "");
    try {
      const response = await api("/reports", {
        method: "POST",
        auth: true,
        json: { target_type: targetType, target_id: Number(targetId), reason: data.get("reason"), note },
      });
      if (response.status === 201 || response.status === 409) {
        form.replaceWith(el("span", {
          className: "hint report-done",
          text: response.status === 201 ? "Reported. Thank you: a moderator will look at it."
            : "You have reported this already; a moderator will look at it.",
          attrs: { role: "status" },
        }));
        button.disabled = true;
        return;
      }
      say(message, await failure(response, "The report could not be sent."));
    } catch {
      say(message, "The server could not be reached.");
    }
    submit.disabled = false;
  });
  button.after(form);
  form.querySelector("select").focus();
}

export function reportButton(targetType, targetId, label = "Report") {
  const button = el("button", { className: "link-button report-button", text: label,
    attrs: { type: "button", "data-report": targetType, "data-target-id": targetId } });
  button.addEventListener("click", () => openReport(button, targetType, targetId));
  return button;
}

// The report buttons the server rendered.
export function wireReportButtons(root = document) {
  for (const button of root.querySelectorAll("button[data-report]")) {
    button.addEventListener("click", () => openReport(button, button.dataset.report, button.dataset.targetId));
  }
}
