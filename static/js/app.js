// Keyboard shortcuts and small toggles. No inline scripts anywhere (strict CSP): behaviour lives here.
(function () {
  "use strict";

  // Styles may depend on it; the browser tests check it to know this file ran.
  document.documentElement.classList.add("js");

  var NOT_TYPED_INTO = { button: true, checkbox: true, radio: true, submit: true, reset: true, hidden: true };

  // Keys typed into a text field are text, not shortcuts. A focused radio button or checkbox
  // (just clicked: the label, a rule) does not take letters, so shortcuts still work there.
  function typing(target) {
    if (!target || !target.tagName) {
      return false;
    }
    var tag = target.tagName;
    if (tag === "INPUT") {
      return !NOT_TYPED_INTO[(target.getAttribute("type") || "text").toLowerCase()];
    }
    return tag === "TEXTAREA" || tag === "SELECT" || target.isContentEditable;
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat || typing(event.target)) {
      return;
    }
    if (!event.key || event.key.length !== 1) {
      return;
    }
    var element = document.querySelector('[data-shortcut="' + event.key.toLowerCase() + '"]');
    if (element && !element.disabled) {
      event.preventDefault();
      element.click();
    }
  });

  // <button data-toggle="ID" data-toggle-class="CLASS">: toggles CLASS on #ID. CLASS always hides
  // something (hidden, collapsed, blurred), so the button's aria-expanded / aria-pressed is its absence.
  document.addEventListener("click", function (event) {
    var trigger = event.target.closest && event.target.closest("[data-toggle]");
    if (!trigger) {
      return;
    }
    var target = document.getElementById(trigger.getAttribute("data-toggle"));
    if (!target) {
      return;
    }
    var on = target.classList.toggle(trigger.getAttribute("data-toggle-class") || "hidden");
    ["aria-expanded", "aria-pressed"].forEach(function (attribute) {
      if (trigger.hasAttribute(attribute)) {
        trigger.setAttribute(attribute, String(!on));
      }
    });
  });

  // <textarea data-unsaved-note="ID">: #ID shows while the text differs from what the page loaded with
  // (the draft editor: "Publish" saves the text as shown, and the note says so).
  document.addEventListener("input", function (event) {
    var field = event.target;
    if (!field || !field.hasAttribute || !field.hasAttribute("data-unsaved-note")) {
      return;
    }
    var note = document.getElementById(field.getAttribute("data-unsaved-note"));
    if (note) {
      note.classList.toggle("hidden", field.value === field.defaultValue);
    }
  });
})();
