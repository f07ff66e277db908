-- Argo CD health check for phasegate.dev/DatabaseMigration.
--
-- Install as resource.customizations.health.phasegate.dev_DatabaseMigration in argocd-cm
-- (see README.md). Tested by hack/lua-health-test.sh against health_test.yaml.
--
--   Healthy      expand is applied (condition Expanded=True) and the migration has not
--                failed: AwaitingRollout, Soaking, Contracting, Succeeded. A migration in
--                an earlier sync wave therefore releases the Deployment in the next wave.
--   Progressing  not observed yet, status older than the spec (observedGeneration <
--                metadata.generation), Pending or Expanding.
--   Suspended    AwaitingApproval: contract waits for phasegate.dev/approve: "true".
--   Degraded     Failed; the message is the Stalled condition's.
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
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of(status, "Stalled", "The migration failed")
  return hs
end

if phase == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = "Expand applied and rollout complete; contract waits for the annotation phasegate.dev/approve: \"true\""
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Expand and contract applied"
  return hs
end

if is_true(status, "Expanded") then
  hs.status = "Healthy"
  if phase == "AwaitingRollout" then
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
end

hs.status = "Progressing"
hs.message = message_of(status, "Reconciling", phase)
return hs
