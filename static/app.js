// The page's own behaviour, beyond htmx: elapsed time on running cards, and saying when a task ends
// (in the tab's title and, where the person allowed it, a browser notification).
(function () {
  "use strict";
  var baseTitle = document.title;
  var ended = 0;

  function duration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    if (seconds < 60) return seconds + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + String(seconds % 60).padStart(2, "0") + " s";
    return Math.floor(seconds / 3600) + " h " + String(Math.floor(seconds % 3600 / 60)).padStart(2, "0") + " min";
  }

  function tick() {
    document.querySelectorAll("[data-elapsed-since]").forEach(function (element) {
      element.textContent = duration(Date.now() / 1000 - Number(element.dataset.elapsedSince)) + " so far";
    });
  }

  function announce(card) {
    ended += 1;
    document.title = "(" + ended + " done) " + baseTitle;
    var summary = card && card.querySelector(".task-prompt-details summary");
    var text = summary ? summary.textContent : "A task";
    if ("Notification" in window && Notification.permission === "granted") {
      new Notification("Task finished", { body: text });
    }
  }

  document.addEventListener("htmx:sseBeforeMessage", function (event) {
    if (event.detail && event.detail.type === "done") announce(event.target.closest("article.task"));
  });
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) { ended = 0; document.title = baseTitle; }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("notify");
    if (button && "Notification" in window && Notification.permission === "default") {
      button.hidden = false;
      button.addEventListener("click", function () {
        Notification.requestPermission().then(function () { button.hidden = true; });
      });
    }
  });
  setInterval(tick, 1000);
})();
