// Keyboard shortcuts and small toggles. No inline scripts anywhere (strict CSP): behaviour lives here.
(function () {
  "use strict";

  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) {
      return;
    }
    var element = document.querySelector('[data-shortcut="' + event.key.toLowerCase() + '"]');
    if (element && !element.disabled) {
      event.preventDefault();
      element.click();
    }
  });

  document.addEventListener("click", function (event) {
    var trigger = event.target.closest("[data-toggle]");
    if (!trigger) {
      return;
    }
    var target = document.getElementById(trigger.getAttribute("data-toggle"));
    if (target) {
      target.classList.toggle(trigger.getAttribute("data-toggle-class") || "hidden");
    }
  });
})();
