// The page's only script (served by the service itself: no CDN). It speaks the same /v1 API as any client:
// a multipart create with the subjects' words and files, polling for progress, then the video and its
// contact sheet (the spritesheet variant), fetched with the bearer token and shown from blob URLs.
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem("polyvivid-token", token);
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function blobUrl(path) {
  return URL.createObjectURL(await (await api(path)).blob());
}

async function submit(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("prompt", $("prompt").value);
  const subjects = [];
  for (const row of document.querySelectorAll(".subject")) {
    const word = row.querySelector(".word").value.trim();
    const file = row.querySelector(".image").files[0];
    if (!word && !file) continue;
    if (!word || !file) { say("each subject needs its word and its image", true); return; }
    subjects.push({ name: word });
    form.append("input_reference", file, file.name);
  }
  form.append("subjects", JSON.stringify(subjects));
  for (const [id, field] of [["width", "width"], ["height", "height"], ["frames", "num_frames"], ["steps", "steps"]]) {
    if ($(id).value) form.append(field, $(id).value);
  }
  $("submit").disabled = true;
  $("result").hidden = true;
  try {
    let video = await (await api("/v1/videos", { method: "POST", body: form })).json();
    $("progress").hidden = false;
    while (["queued", "in_progress"].includes(video.status)) {
      say(`${video.status.replace("_", " ")}: ${video.progress}%`);
      $("progress").value = video.progress;
      video = await (await api(`/v1/videos/${video.id}?wait=2`)).json();
    }
    $("progress").value = video.progress;
    if (video.status !== "completed") throw new Error(`${video.status}: ${video.error ? video.error.message : ""}`);
    $("video").src = await blobUrl(`/v1/videos/${video.id}/content`);
    $("sheet").src = await blobUrl(`/v1/videos/${video.id}/content?variant=spritesheet`);
    $("result").hidden = false;
    say(`done: ${video.size}, ${video.num_frames} frames (${video.id})`);
  } catch (error) {
    say(error.message, true);
  } finally {
    $("submit").disabled = false;
  }
}

function addSubject() {
  const row = document.querySelector(".subject").cloneNode(true);
  row.querySelector(".word").value = "";
  row.querySelector(".image").value = "";
  $("subjects").appendChild(row);
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = sessionStorage.getItem("polyvivid-token") || "";
  $("request").addEventListener("submit", submit);
  $("add-subject").addEventListener("click", addSubject);
});
