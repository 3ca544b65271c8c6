/*
 * Clinic finder widget. Paste on any page:
 *
 *   <div data-clinic-finder></div>
 *   <script src="https://HOST/widget.js" data-specialty="sports" data-unit="mi" async></script>
 *
 * Every element with data-clinic-finder becomes a finder. Options are read from the element
 * first, then from the script tag: data-specialty, data-unit (mi|km), data-radius (a number,
 * or "any"), data-limit, data-directions (google|apple|osm), data-query / data-zip (search at
 * once), data-api-base (defaults to where this script came from), data-include-possible
 * (true|false, default true: a specialty search also lists clinics whose record does not say
 * whether they offer it, marked "specialty not on record" on their card; "false" lists only
 * clinics on record as offering it), data-heading-level (2-6, default 3: the level of each
 * clinic's name, to fit the host page's outline).
 *
 * Plain JavaScript, no dependencies, no third-party requests. The finder renders into a
 * shadow root so the host page's CSS cannot break it; it is themed through CSS custom
 * properties (--cf-accent, --cf-font, ...; see widget.css) set on the host element.
 * Accessibility (settle delay, live regions, derived colours): see the README's widget section.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  var scriptBase = script && script.src ? new URL(".", script.src).href : null;
  var RADII = ["5", "10", "25", "50", "100"];
  var ZIP_RE = /^\d{5}(-\d{4})?$/;
  var COORDS_RE = /^\s*(-?\d{1,2}(?:\.\d+)?)\s*,\s*(-?\d{1,3}(?:\.\d+)?)\s*$/;
  var specialtiesByBase = {};
  var OFF = ["false", "no", "off", "0"];
  // A select changed with the arrow keys fires "change" per step: search once the user settles.
  var SETTLE_MS = 900;
  // How long a search answer waits for the specialty labels before showing codes instead.
  var LABELS_WAIT_MS = 3000;

  var TEMPLATE =
    '<section class="cf" aria-label="Find a physical therapy clinic">' +
    '<form class="cf-form" novalidate>' +
    '<div class="cf-field cf-where">' +
    '<label for="cf-q">ZIP code, city or address</label>' +
    '<div class="cf-where-row">' +
    '<input id="cf-q" name="q" type="search" autocomplete="postal-code" spellcheck="false"' +
    ' maxlength="300" aria-describedby="cf-hint">' +
    '<button type="submit" class="cf-search">Search</button>' +
    "</div>" +
    '<p id="cf-hint" class="cf-hint">For example 78201, San Antonio, TX, or a street address.</p>' +
    "</div>" +
    '<div class="cf-options">' +
    '<div class="cf-field"><label for="cf-radius">Within</label>' +
    '<select id="cf-radius" name="radius"></select></div>' +
    '<div class="cf-field"><label for="cf-unit">Unit</label>' +
    '<select id="cf-unit" name="unit"><option value="mi">miles</option>' +
    '<option value="km">kilometres</option></select></div>' +
    '<div class="cf-field"><label for="cf-specialty">Specialty</label>' +
    '<select id="cf-specialty" name="specialty"><option value="">Any specialty</option>' +
    "</select></div>" +
    "</div>" +
    '<button type="button" class="cf-locate">Use my location</button>' +
    "</form>" +
    '<p class="cf-status" role="status" aria-live="polite"></p>' +
    '<p id="cf-error" class="cf-error" role="alert"></p>' +
    '<ol class="cf-results" aria-label="Clinics by distance"></ol>' +
    '<div class="cf-outside" hidden>' +
    '<ol class="cf-results cf-results-outside" aria-label="Nearest clinic outside your search radius"></ol>' +
    "</div>" +
    "</section>";

  function option(element, name, fallback) {
    var value = element.getAttribute("data-" + name);
    if (value === null && script) value = script.getAttribute("data-" + name);
    return value === null || value === "" ? fallback : value;
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function unitWord(unit, value) {
    if (unit === "km") return value === 1 ? "kilometre" : "kilometres";
    return value === 1 ? "mile" : "miles";
  }

  function formatDistance(hit, unit) {
    var value = unit === "km" ? hit.distance_km : hit.distance_mi;
    var shown = value < 10 ? value.toFixed(1) : String(Math.round(value));
    return shown + " " + (unit === "km" ? "km" : "mi");
  }

  // A location placed only by its ZIP or city: the distance is to that area's centre, so a
  // distance under one unit says where instead ("in 55413"), never "about 0.0 mi".
  function distanceText(hit, unit) {
    var location = hit.location;
    var precision = location.geocode_precision;
    var approximate = precision === "city" || precision === "postal_code";
    var value = unit === "km" ? hit.distance_km : hit.distance_mi;
    var word = unit === "km" ? "km" : "mi";
    if (approximate && value < 1) {
      if (precision === "postal_code" && location.zip) return "in " + location.zip;
      if (precision === "city" && location.city) return "in " + location.city;
      return "under 1 " + word;
    }
    if (value < 0.05) return "under 0.1 " + word;
    return (approximate ? "about " : "") + formatDistance(hit, unit);
  }

  function formatPhone(e164) {
    var us = /^\+1(\d{3})(\d{3})(\d{4})$/.exec(e164);
    return us ? "(" + us[1] + ") " + us[2] + "-" + us[3] : e164;
  }

  function addressText(location) {
    var street = [location.address_line1, location.address_line2].filter(Boolean).join(", ");
    var place = [location.city, [location.state, location.zip].filter(Boolean).join(" ")]
      .filter(Boolean)
      .join(", ");
    return [street, place].filter(Boolean).join(", ");
  }

  function directionsUrl(kind, location) {
    var street = location.address_line1 ? addressText(location) : null;
    var point = location.lat + "," + location.lon;
    if (kind === "osm") {
      return (
        "https://www.openstreetmap.org/?mlat=" + location.lat + "&mlon=" + location.lon +
        "#map=16/" + location.lat + "/" + location.lon
      );
    }
    if (kind === "apple") {
      return "https://maps.apple.com/?daddr=" + encodeURIComponent(street || point);
    }
    return (
      "https://www.google.com/maps/dir/?api=1&destination=" + encodeURIComponent(street || point)
    );
  }

  // Problems come as RFC 9457 problem+json; turn them into words a visitor can act on.
  function problemMessage(status, problem) {
    if (status === 429) return "Too many searches just now. Please wait a moment and try again.";
    if (status >= 500) return "The clinic finder is having trouble right now. Please try again later.";
    var params = (problem && problem.invalid_params) || [];
    var first = params[0];
    if (first) {
      var reason = first.reason || "";
      if (first.name === "zip") return "We could not find that ZIP code (" + reason + ").";
      if (first.name === "address" || first.name === "city" || first.name === "state") {
        return "We could not find that place. Try a 5-digit ZIP code or a city and state, like San Antonio, TX.";
      }
      if (first.name === "specialty") return "That specialty is not in our directory (" + reason + ").";
      if (first.name === "radius") return "Please choose a smaller search distance (" + reason + ").";
      return "We could not search for that: " + first.name + " " + reason + ".";
    }
    return (problem && (problem.detail || problem.title)) || "The search did not work (HTTP " + status + ").";
  }

  function Finder(host) {
    this.host = host;
    this.base = option(host, "api-base", scriptBase || "/");
    this.unit = option(host, "unit", "mi") === "km" ? "km" : "mi";
    this.limit = Math.max(1, Math.min(50, parseInt(option(host, "limit", "10"), 10) || 10));
    this.directions = option(host, "directions", "google");
    var possible = String(option(host, "include-possible", "true")).toLowerCase();
    this.includePossible = OFF.indexOf(possible) < 0;
    var level = parseInt(option(host, "heading-level", "3"), 10);
    this.headingTag = "h" + (level >= 2 && level <= 6 ? level : 3);
    this.settleTimer = null;
    this.sequence = 0;
    this.controller = null;
    this.lastOrigin = null;

    var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
    var style = document.createElement("link");
    style.rel = "stylesheet";
    style.href = new URL("widget.css", this.base).href;
    root.appendChild(style);
    var wrapper = document.createElement("div");
    wrapper.innerHTML = TEMPLATE; // constant markup: no data goes through innerHTML
    root.appendChild(wrapper.firstChild);
    this.root = root;

    var find = function (selector) {
      return root.querySelector(selector);
    };
    this.form = find(".cf-form");
    this.input = find("#cf-q");
    this.radius = find("#cf-radius");
    this.unitSelect = find("#cf-unit");
    this.specialty = find("#cf-specialty");
    this.locate = find(".cf-locate");
    this.status = find(".cf-status");
    this.error = find(".cf-error");
    this.results = find(".cf-results");
    this.outside = find(".cf-outside");
    this.outsideList = find(".cf-results-outside");

    this.unitSelect.value = this.unit;
    this.fillRadii(option(host, "radius", "25"));
    var preset = option(host, "specialty", "");
    if (preset) this.addSpecialtyOption(preset, preset);
    this.specialty.value = preset;
    this.loadSpecialties(preset);

    var self = this;
    this.form.addEventListener("submit", function (event) {
      event.preventDefault();
      self.cancelSettle();
      self.searchText();
    });
    this.locate.addEventListener("click", function () {
      self.searchHere();
    });
    this.unitSelect.addEventListener("change", function () {
      self.unit = self.unitSelect.value;
      self.fillRadii(self.radius.value);
    });
    // Stepping through a closed select with the keys changes it once per key: search when the
    // user settles (a pause, or leaving the select); a pick with the mouse searches at once.
    var stepping = false;
    [this.radius, this.unitSelect, this.specialty].forEach(function (select) {
      select.addEventListener("keydown", function (event) {
        stepping = /^(Arrow|Page|Home|End)/.test(event.key) || event.key.length === 1;
      });
      select.addEventListener("change", function () {
        if (stepping) self.settle();
        else self.settleNow();
        stepping = false;
      });
      select.addEventListener("blur", function () {
        if (self.settleTimer !== null) self.settleNow();
      });
    });

    var initial = option(host, "query", "") || option(host, "zip", "");
    if (initial) {
      this.input.value = initial;
      this.searchText();
    }
  }

  Finder.prototype.fillRadii = function (selected) {
    var unit = this.unit;
    this.radius.textContent = "";
    var values = RADII.slice();
    if (selected && selected !== "any" && values.indexOf(selected) < 0 && +selected > 0) {
      values.push(selected);
      values.sort(function (a, b) {
        return a - b;
      });
    }
    for (var i = 0; i < values.length; i++) {
      var item = el("option", null, values[i] + " " + unitWord(unit, +values[i]));
      item.value = values[i];
      this.radius.appendChild(item);
    }
    var any = el("option", null, "Any distance");
    any.value = "any";
    this.radius.appendChild(any);
    this.radius.value = selected && (selected === "any" || +selected > 0) ? selected : "25";
  };

  Finder.prototype.addSpecialtyOption = function (code, label) {
    var item = el("option", null, label);
    item.value = code;
    this.specialty.appendChild(item);
    return item;
  };

  Finder.prototype.loadSpecialties = function (preset) {
    var self = this;
    var url = new URL("v1/specialties", this.base).href;
    if (!specialtiesByBase[url]) {
      specialtiesByBase[url] = fetch(url, { credentials: "omit" }).then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      });
    }
    // Settles (either way) when the labels are in: a search answer waits for it, so the status
    // names "Sports", not the code "sports".
    this.labelsReady = specialtiesByBase[url]
      .then(function (specialties) {
        self.labels = {};
        var chosen = self.specialty.value;
        self.specialty.textContent = "";
        self.addSpecialtyOption("", "Any specialty");
        specialties.forEach(function (specialty) {
          self.labels[specialty.code] = specialty.label;
          self.addSpecialtyOption(specialty.code, specialty.label);
        });
        if (chosen && !self.labels[chosen]) self.addSpecialtyOption(chosen, chosen);
        self.specialty.value = chosen || preset || "";
        self.relabel();
      })
      .catch(function () {
        // The finder still works: codes are shown instead of labels.
        self.labels = self.labels || {};
      });
  };

  Finder.prototype.settle = function () {
    var self = this;
    this.cancelSettle();
    if (!this.lastOrigin) return;
    this.settleTimer = setTimeout(function () {
      self.settleNow();
    }, SETTLE_MS);
  };

  Finder.prototype.cancelSettle = function () {
    if (this.settleTimer !== null) clearTimeout(this.settleTimer);
    this.settleTimer = null;
  };

  Finder.prototype.settleNow = function () {
    this.cancelSettle();
    this.again();
  };

  Finder.prototype.label = function (code) {
    return (this.labels && this.labels[code]) || code.replace(/_/g, " ");
  };

  // Asked for, and the clinic's record says neither yes nor no: in words, not colour alone.
  Finder.prototype.possibleText = function (codes) {
    var labels = codes.map(this.label, this).join(", ");
    return labels + (codes.length === 1 ? ": specialty not on record" : ": specialties not on record");
  };

  Finder.prototype.relabel = function () {
    var self = this;
    var nodes = this.root.querySelectorAll(".cf-specialties, .cf-possible");
    Array.prototype.forEach.call(nodes, function (node) {
      var codes = (node.getAttribute("data-codes") || "").split(" ").filter(Boolean);
      node.textContent = node.classList.contains("cf-possible")
        ? self.possibleText(codes)
        : codes.map(function (code) {
            return self.label(code);
          }).join(" · ");
    });
  };

  // The error region stays rendered (empty) so that filling it is announced; one about the
  // typed place is also tied to the input, which then reads as invalid with the message.
  Finder.prototype.showError = function (message, aboutInput) {
    this.error.textContent = message;
    this.status.textContent = "";
    if (aboutInput) {
      this.input.setAttribute("aria-invalid", "true");
      this.input.setAttribute("aria-describedby", "cf-error cf-hint");
      this.input.setAttribute("aria-errormessage", "cf-error");
    }
  };

  Finder.prototype.clear = function () {
    this.error.textContent = "";
    this.results.textContent = "";
    this.outsideList.textContent = "";
    this.outside.hidden = true;
    this.input.removeAttribute("aria-invalid");
    this.input.removeAttribute("aria-errormessage");
    this.input.setAttribute("aria-describedby", "cf-hint");
  };

  Finder.prototype.searchText = function () {
    var text = this.input.value.trim();
    if (!text) {
      this.clear();
      this.showError("Type a ZIP code, a city and state, or an address — or use your location.", true);
      this.input.focus();
      return;
    }
    var coords = COORDS_RE.exec(text);
    var origin;
    if (ZIP_RE.test(text)) origin = { zip: text };
    else if (coords) origin = { lat: coords[1], lon: coords[2] };
    else origin = { address: text };
    origin.description = text;
    this.search(origin);
  };

  Finder.prototype.searchHere = function () {
    var self = this;
    this.clear();
    if (!navigator.geolocation || window.isSecureContext === false) {
      this.showError("This browser cannot share your location here. Type a ZIP code, city or address instead.");
      return;
    }
    this.status.textContent = "Finding your location…";
    this.locate.disabled = true;
    navigator.geolocation.getCurrentPosition(
      function (position) {
        self.locate.disabled = false;
        self.search({
          lat: position.coords.latitude.toFixed(5),
          lon: position.coords.longitude.toFixed(5),
          description: "your location",
        });
      },
      function (failure) {
        self.locate.disabled = false;
        var messages = {
          1: "Location access was refused. Type a ZIP code, city or address instead.",
          2: "Your location is not available right now. Type a ZIP code, city or address instead.",
          3: "Finding your location took too long. Type a ZIP code, city or address instead.",
        };
        self.showError(messages[failure.code] || messages[2]);
      },
      { enableHighAccuracy: false, timeout: 15000, maximumAge: 300000 }
    );
  };

  Finder.prototype.again = function () {
    if (this.lastOrigin) this.search(this.lastOrigin);
  };

  Finder.prototype.search = function (origin) {
    var self = this;
    this.cancelSettle();
    this.lastOrigin = origin;
    var params = new URLSearchParams();
    ["zip", "lat", "lon", "address"].forEach(function (name) {
      if (origin[name] !== undefined) params.set(name, origin[name]);
    });
    if (this.specialty.value) {
      params.set("specialty", this.specialty.value);
      if (this.includePossible) params.set("include_possible", "true");
    }
    if (this.radius.value !== "any") params.set("radius", this.radius.value);
    params.set("unit", this.unit);
    params.set("limit", String(this.limit));

    // Only the newest search may paint its answer.
    var sequence = ++this.sequence;
    if (this.controller) this.controller.abort();
    this.controller = typeof AbortController === "function" ? new AbortController() : null;
    this.clear();
    this.status.textContent = "Searching…";
    this.results.setAttribute("aria-busy", "true");

    var url = new URL("v1/locations/nearest", this.base).href + "?" + params.toString();
    var labels = this.labelsReady;
    var labelsOrTimeout = new Promise(function (resolve) {
      labels.then(resolve, resolve);
      setTimeout(resolve, LABELS_WAIT_MS);
    });
    fetch(url, {
      credentials: "omit",
      headers: { Accept: "application/json" },
      signal: this.controller ? this.controller.signal : undefined,
    })
      .then(function (response) {
        return response
          .json()
          .catch(function () {
            return null;
          })
          .then(function (body) {
            return { status: response.status, ok: response.ok, body: body };
          });
      })
      .then(function (answer) {
        return labelsOrTimeout.then(function () {
          return answer;
        });
      })
      .then(function (answer) {
        if (sequence !== self.sequence) return;
        self.results.removeAttribute("aria-busy");
        if (!answer.ok || !answer.body) {
          var aboutInput = !!(answer.body && answer.body.invalid_params) &&
            origin.description !== "your location";
          self.showError(problemMessage(answer.status, answer.body), aboutInput);
          return;
        }
        self.render(answer.body, origin);
      })
      .catch(function (failure) {
        if (sequence !== self.sequence || (failure && failure.name === "AbortError")) return;
        self.results.removeAttribute("aria-busy");
        self.showError("Could not reach the clinic finder. Check your connection and try again.");
      });
  };

  Finder.prototype.render = function (body, origin) {
    var unit = this.unit;
    var where = origin.description === "your location"
      ? "your location"
      : (body.origin && body.origin.label) || origin.description;
    var asked = this.specialty.value ? this.label(this.specialty.value) : null;
    var specialty = asked ? " for " + asked : "";
    var radius = body.radius ? body.radius.value + " " + unitWord(unit, body.radius.value) : null;
    var list = this.results;
    var possible = 0;
    body.results.forEach(function (hit) {
      if (hit.specialty_match === "possible") possible += 1;
      list.appendChild(this.item(hit));
    }, this);

    var total = body.results.length;
    if (total) {
      var count = total === 1 ? "1 clinic" : total + " clinics";
      var scope = radius ? " within " + radius + " of " + where : " nearest to " + where;
      var order = radius ? ", nearest first" : "";
      if (!possible) {
        this.status.textContent = count + specialty + scope + order + ".";
      } else if (possible < total) {
        var onRecord = total - possible;
        this.status.textContent =
          count + specialty + scope + order + "; " + onRecord +
          (onRecord === 1 ? " is" : " are") + " on record as offering it, " + possible +
          " may offer it (not on record).";
      } else if (radius) {
        // Nothing confirmed: say so before listing the clinics that might.
        this.status.textContent =
          "No clinic" + scope + " is on record as offering " + asked + "; " + possible +
          " there may offer it (not on record), nearest first.";
      } else {
        this.status.textContent = total === 1
          ? "The clinic" + scope + " may offer " + asked + " (not on record)."
          : "The " + count + scope + " may offer " + asked +
            " (not on record); none of them is on record as offering it.";
      }
      this.status.textContent += this.leftOut(body);
      return;
    }
    var outside = body.nearest_outside_radius;
    if (outside) {
      var nearest = outside.specialty_match === "possible"
        ? " The nearest that may offer it (not on record) is "
        : " The nearest is ";
      var away = distanceText(outside, unit);
      this.status.textContent =
        "No clinics" + specialty + " within " + radius + " of " + where + "." + nearest +
        away + (/^in /.test(away) ? "." : " away.") + this.leftOut(body);
      this.outsideList.appendChild(this.item(outside));
      this.outside.hidden = false;
      return;
    }
    this.status.textContent =
      "No clinics" + specialty + " found near " + where + "." + this.leftOut(body);
  };

  // With data-include-possible="false": how many clinics were left out for not being on record.
  Finder.prototype.leftOut = function (body) {
    var unknown = (body.excluded_unknown && body.excluded_unknown.specialty) || 0;
    if (!unknown || !this.specialty.value) return "";
    var radius = body.radius
      ? " within " + body.radius.value + " " + unitWord(this.unit, body.radius.value)
      : "";
    return (
      " " + (unknown === 1 ? "1 clinic location" : unknown + " clinic locations") + radius +
      " not on record for " +
      this.label(this.specialty.value) + (unknown === 1 ? " is" : " are") + " not shown."
    );
  };

  Finder.prototype.item = function (hit) {
    var clinic = hit.clinic;
    var location = hit.location;
    var item = el("li", "cf-result");
    var head = el("div", "cf-result-head");
    head.appendChild(el(this.headingTag, "cf-name", clinic.name || "Clinic name not on record"));
    head.appendChild(el("span", "cf-distance", distanceText(hit, this.unit)));
    item.appendChild(head);

    var address = addressText(location);
    var where = el("p", "cf-address", address || "Address not on record");
    if (address && !location.address_line1) {
      where.appendChild(el("span", "cf-unknown", " · street address not on record"));
    }
    item.appendChild(where);
    if (clinic.specialties && clinic.specialties.length) {
      var specialties = el("p", "cf-specialties");
      specialties.setAttribute("data-codes", clinic.specialties.join(" "));
      specialties.textContent = clinic.specialties.map(this.label, this).join(" · ");
      item.appendChild(specialties);
    }
    var unknown = hit.specialty_match === "possible" ? hit.specialties_unknown || [] : [];
    if (unknown.length) {
      var mark = el("p", "cf-possible", this.possibleText(unknown));
      mark.setAttribute("data-codes", unknown.join(" "));
      item.appendChild(mark);
    }
    var links = el("p", "cf-links");
    if (clinic.phone) {
      var call = el("a", "cf-phone", formatPhone(clinic.phone));
      call.href = "tel:" + clinic.phone;
      call.setAttribute("aria-label", "Call " + (clinic.name || "this clinic") + ", " + formatPhone(clinic.phone));
      links.appendChild(call);
    } else {
      links.appendChild(el("span", "cf-phone cf-unknown", "Phone not on record"));
    }
    if (location.lat !== null && location.lon !== null) {
      var go = el("a", "cf-directions", "Directions");
      go.href = directionsUrl(this.directions, location);
      go.target = "_blank";
      go.rel = "noopener noreferrer";
      go.setAttribute(
        "aria-label",
        "Directions to " + (clinic.name || address || "this clinic") + " (opens in a new tab)"
      );
      links.appendChild(go);
    }
    item.appendChild(links);
    return item;
  };

  function mount(host) {
    if (!host || host.getAttribute("data-clinic-finder-ready") !== null) return null;
    host.setAttribute("data-clinic-finder-ready", "");
    return new Finder(host);
  }

  function mountAll() {
    var hosts = document.querySelectorAll("[data-clinic-finder]");
    for (var i = 0; i < hosts.length; i++) mount(hosts[i]);
  }

  window.ClinicFinder = { mount: mount, mountAll: mountAll };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mountAll);
  else mountAll();
})();
