// The flow both confirmation dialogs of index.html share: command-dialog
// (pause, resume, kill; actions.js) and confirm-dialog (delete; cleanup.js).
// Each has the elements `${name}-dialog`, -form, -title, -error and -cancel,
// and one submit button.

// Shows the dialog with its title and the submit button's label, then focuses
// `focus` (the Cancel button unless given). Resolves to what run() answers once
// the form is submitted, or null when cancelled or closed. While run() goes on
// the button is disabled; what it throws is shown in the dialog, which stays
// open for another try. run(progress): progress(text) shows text where errors go.
export function confirmDialog(name, { title, button, focus = null }, run) {
  const dialog = document.getElementById(`${name}-dialog`);
  const form = document.getElementById(`${name}-form`);
  const cancel = document.getElementById(`${name}-cancel`);
  const error = document.getElementById(`${name}-error`);
  const ok = form.querySelector("button[type=submit]");
  document.getElementById(`${name}-title`).textContent = title;
  ok.textContent = button;
  error.textContent = "";
  return new Promise((resolve) => {
    const done = (value) => {
      form.onsubmit = null;
      cancel.onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    form.onsubmit = async (event) => {
      event.preventDefault();
      ok.disabled = true;
      try {
        done(await run((progress) => { error.textContent = progress; }));
      } catch (e) {
        error.textContent = e.message;
      } finally {
        ok.disabled = false;
      }
    };
    cancel.onclick = () => done(null);
    dialog.onclose = () => done(null);
    dialog.showModal();
    (focus || cancel).focus();
  });
}
