// pgml dashboard: progressive enhancement only. Every control works as a plain form without it.
// Values from the database reach the DOM as text (textContent) or as HTML escaped by the server.
"use strict";
(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  async function post(url, body) {
    const res = await fetch(url, {method: "POST", body: body, credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf(), "Accept": "application/json"}});
    if (!res.ok) throw new Error((await res.text()) || res.statusText);
    return res.json();
  }

  // Stream a job's NOTICEs into `box`, then replace them with the rendered result.
  function follow(job, box, onEnd) {
    box.textContent = "";
    const list = document.createElement("ol");
    list.className = "notices live";
    box.appendChild(list);
    const status = document.createElement("p");
    status.className = "status muted running";
    status.textContent = "running…";
    box.appendChild(status);
    const events = new EventSource("/jobs/" + encodeURIComponent(job) + "/events");
    events.addEventListener("notice", (e) => {
      const n = JSON.parse(e.data);
      const li = document.createElement("li");
      const sev = document.createElement("span");
      sev.className = "sev";
      sev.textContent = n.severity;
      li.appendChild(sev);
      li.appendChild(document.createTextNode(" " + n.message));
      list.appendChild(li);
    });
    events.addEventListener("done", async () => {
      events.close();
      await loadResult("/jobs/" + encodeURIComponent(job) + "/result?page=0", box);
      if (onEnd) onEnd();
    });
    events.onerror = () => { if (events.readyState === EventSource.CLOSED && onEnd) onEnd(); };
  }

  async function loadResult(url, box) {
    const res = await fetch(url, {credentials: "same-origin"});
    box.innerHTML = await res.text();           // escaped by the server's templates
  }

  document.addEventListener("click", (e) => {
    const a = e.target.closest("a.pager");
    if (a && a.getAttribute("href").startsWith("/jobs/")) {
      e.preventDefault();
      loadResult(a.getAttribute("href"), a.closest(".cell-output"));
    }
  });

  // ---- notebooks
  function runCell(form) {
    const cell = form.closest(".cell");
    const box = cell.querySelector(".cell-output");
    const runBtn = form.querySelector("button.run");
    const cancelBtn = form.querySelector("button.cancel");
    const kind = form.querySelector("select[name=kind]").value;
    runBtn.disabled = true;
    post(form.action, new FormData(form)).then((answer) => {
      if (answer.html !== undefined) {
        let md = cell.querySelector(".markdown");
        if (!md) { md = document.createElement("div"); md.className = "markdown"; form.after(md); }
        md.innerHTML = answer.html;              // markdown-it output, raw HTML disabled
        const details = form.closest("details");
        if (details) details.open = false;
        cell.classList.remove("sql"); cell.classList.add("markdown");
        box.textContent = "";
        runBtn.disabled = false;
        return;
      }
      cell.classList.toggle("markdown", kind === "markdown");
      cancelBtn.hidden = false;
      cancelBtn.onclick = () => post("/jobs/" + encodeURIComponent(answer.job) + "/cancel", null).catch(() => {});
      follow(answer.job, box, () => { runBtn.disabled = false; cancelBtn.hidden = true; });
    }).catch((err) => {
      box.textContent = String(err.message || err);
      runBtn.disabled = false;
    });
  }

  document.querySelectorAll("form.cell-form").forEach((form) => {
    form.addEventListener("submit", (e) => {
      if (e.submitter && !e.submitter.classList.contains("run")) return;   // Save / Delete: plain POST
      e.preventDefault();
      runCell(form);
    });
    form.querySelector("textarea").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && e.shiftKey) { e.preventDefault(); runCell(form); }
    });
  });

  // ---- data explorer: the train form
  const train = document.getElementById("train-form");
  if (train) {
    const preview = document.getElementById("train-statement");
    const algo = train.querySelector("select[name=algorithm]");
    const byTask = JSON.parse(algo.dataset.algorithms);
    const refresh = async () => {
      const q = new URLSearchParams(new FormData(train));
      q.delete("csrf");
      const res = await fetch(train.dataset.preview + "?" + q.toString(), {credentials: "same-origin"});
      preview.textContent = await res.text();
    };
    train.querySelector("select[name=task]").addEventListener("change", (e) => {
      const keep = algo.value;
      algo.textContent = "";
      for (const name of byTask[e.target.value] || []) {
        const o = document.createElement("option");
        o.textContent = name;
        if (name === keep) o.selected = true;
        algo.appendChild(o);
      }
      refresh();
    });
    train.addEventListener("input", refresh);
    train.addEventListener("change", refresh);
    train.addEventListener("submit", (e) => {
      e.preventDefault();
      const box = document.getElementById("train-output");
      const btn = train.querySelector("button[type=submit]");
      btn.disabled = true;
      post(train.action, new FormData(train)).then((answer) => {
        follow(answer.job, box, () => { btn.disabled = false; });
      }).catch((err) => { box.textContent = String(err.message || err); btn.disabled = false; });
    });
  }
})();
