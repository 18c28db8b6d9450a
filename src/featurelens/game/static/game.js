// Deep Reveal: small progressive enhancements. Every form also works without this script.
(function () {
  "use strict";
  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  }

  // "Show more" without a page reload: POST to the JSON API, then swap the image and the step markers.
  var reveal = document.getElementById("reveal-form");
  if (reveal && window.fetch) {
    reveal.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var btn = document.getElementById("show-more");
      var toStep = parseInt(reveal.querySelector('[name="to_step"]').value, 10);
      btn.disabled = true;
      fetch(reveal.getAttribute("data-api"), {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
        body: JSON.stringify({to_step: toStep})
      }).then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      }).then(function (data) {
        var rnd = data.round;
        var img = document.getElementById("reveal-img");
        var next = new Image();
        next.onload = function () { img.src = next.src; };
        next.src = rnd.image_url;
        document.getElementById("q").textContent = rnd.q_percent;
        var worth = document.getElementById("reveal-info").getAttribute("data-worth").split(",");
        document.getElementById("worth").textContent = worth[rnd.reveal_step];
        document.querySelectorAll(".steps li").forEach(function (li, i) {
          li.classList.toggle("on", i <= rnd.reveal_step);
        });
        reveal.querySelector('[name="to_step"]').value = rnd.reveal_step + 1;
        if (rnd.reveal_step >= rnd.max_step) { reveal.remove(); } else { btn.disabled = false; }
      }).catch(function () { reveal.submit(); });
    });
  }

  // Up to MAX_LABELS label inputs.
  var add = document.getElementById("add-label");
  if (add) {
    add.hidden = false;
    add.addEventListener("click", function () {
      var box = document.getElementById("labels");
      var inputs = box.querySelectorAll('input[name="labels"]');
      var max = parseInt(add.getAttribute("data-max"), 10);
      if (inputs.length >= max) { return; }
      var input = inputs[0].cloneNode(false);
      input.value = "";
      input.placeholder = (add.getAttribute("data-placeholder") || "label") + " " + (inputs.length + 1);
      input.setAttribute("aria-label", input.placeholder);
      box.insertBefore(input, add);
      input.focus();
      if (inputs.length + 1 >= max) { add.hidden = true; }
    });
  }

  // Never send an answer twice by double-clicking (the idempotency key also protects the server side).
  var answer = document.getElementById("answer-form");
  if (answer) {
    answer.addEventListener("submit", function () {
      setTimeout(function () {
        answer.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = true; });
      }, 0);
    });
  }
})();
