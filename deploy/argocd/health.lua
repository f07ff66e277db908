-- Argo CD health check for phasegate.dev/DatabaseMigration.
--
-- Install as resource.customizations.health.phasegate.dev_DatabaseMigration in argocd-cm
-- (see README.md). Tested by hack/lua-health-test.sh against health_test.yaml, and through
-- Argo CD's own Lua health path and sync engine by tests/gitops (make gitops-test).
--
-- Argo CD's sync engine moves past a sync wave only when every resource in it is Healthy;
-- Degraded fails the sync; Progressing, Suspended, Missing and Unknown make it wait. What the
-- application in the next wave needs from a migration is its expand (the new schema), so:
--
--   Healthy      expand is applied — whatever comes after it: AwaitingRollout, Soaking,
--                AwaitingApproval, Contracting, Succeeded, and also Failed when the failure
--                is after expand (rollout timeout, contract failed). Nothing contract waits
--                for (an approval, a soak, a fix of the rollout) ever holds a sync; the
--                message says what the migration waits for or why contract is blocked.
--   Progressing  not observed yet, status older than the spec (observedGeneration <
--                metadata.generation), Pending or Expanding.
--   Degraded     Failed before expand was applied (expand failed, SQL refused by the linter,
--                invalid spec, Job rejected): the sync stops at this wave, so code that needs
--                the schema is never released. The message is the Stalled condition's.
--
-- After expand, a failure leaves Stalled False (kstatus would call it Failed and hold back
-- what depends on the migration); its message is the Ready condition's.
--
-- Suspended is never returned: Argo CD would wait on it and hang every later sync.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(status, ctype)
  local c = condition(status, ctype)
  return c ~= nil and c.status == "True"
end

local function message_of(status, ctype, fallback)
  local c = condition(status, ctype)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Phasegate operator to observe the migration"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
local expanded = is_true(status, "Expanded") or (status.expand ~= nil and status.expand.succeeded == true)

if not expanded then
  if phase == "Failed" then
    hs.status = "Degraded"
    hs.message = message_of(status, "Stalled", "The migration failed")
  else
    hs.status = "Progressing"
    hs.message = message_of(status, "Reconciling", phase)
  end
  return hs
end

-- Expand is applied: the schema the next wave needs exists.
hs.status = "Healthy"
if phase == "Succeeded" then
  hs.message = "Expand and contract applied"
elseif phase == "Failed" then
  hs.message = "Expand applied; contract blocked: " .. message_of(status, "Ready", "the migration failed")
elseif phase == "AwaitingApproval" then
  hs.message = "Expand applied and rollout complete; contract waits for the annotation phasegate.dev/approve: \"true\""
elseif phase == "AwaitingRollout" then
  local ready = status.targetsReady
  if ready ~= nil then
    hs.message = "Expand applied; waiting for the rollout (" .. ready .. " targets ready)"
  else
    hs.message = "Expand applied; waiting for the rollout"
  end
else
  hs.message = "Expand applied; " .. phase
end
return hs
