// One line of status at the top of the page (results of actions, errors).

let timer = null;

export function notify(text, isError = false) {
  const notice = document.getElementById("notice");
  notice.textContent = text;
  notice.classList.toggle("error", isError);
  notice.hidden = false;
  clearTimeout(timer);
  timer = setTimeout(() => { notice.hidden = true; }, 8000);
}
