-- Argo CD health of a Shoal ModelTier (resource.customizations.health.shoal.dev_ModelTier).
-- Healthy: the tier serves the checkpoint in git. Progressing: a rollout or an evaluation of a
-- new checkpoint (or of the serving LoRA adapters on it) is under way. Degraded: the checkpoint
-- in git was blocked by its evaluation or a serving adapter's evaluation on it, or the tier cannot serve (unschedulable, image pull, crash loop, missing references).
local hs = {}
local function find(conditions, type)
  for _, c in ipairs(conditions) do
    if c.type == type then return c end
  end
  return nil
end

if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Shoal operator to report status"
  return hs
end
if obj.metadata.generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Shoal operator to observe generation " .. obj.metadata.generation
  return hs
end

local conditions = obj.status.conditions
local ready = find(conditions, "Ready")
local progressing = find(conditions, "Progressing")
local evaluated = find(conditions, "Evaluated")

if evaluated ~= nil and evaluated.status == "False" and
   (evaluated.reason == "Failed" or evaluated.reason == "TimedOut" or evaluated.reason == "JobError" or evaluated.reason == "AdapterFailed") then
  hs.status = "Degraded"
  hs.message = "Checkpoint blocked: " .. (evaluated.message or evaluated.reason)
  return hs
end
if evaluated ~= nil and evaluated.status ~= "True" and (evaluated.reason == "Evaluating" or evaluated.reason == "EvaluatingAdapters") then
  hs.status = "Progressing"
  hs.message = evaluated.message or "Evaluating the new checkpoint"
  return hs
end
if ready ~= nil and ready.status == "True" then
  if progressing ~= nil and progressing.status == "True" then
    hs.status = "Progressing"
    hs.message = progressing.message or "Rolling out"
    return hs
  end
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
if ready ~= nil and (ready.reason == "WaitingForPods" or ready.reason == "DeploymentPending" or ready.reason == "ServicePending") then
  hs.status = "Progressing"
  hs.message = ready.message or ready.reason
  return hs
end
hs.status = "Degraded"
if ready ~= nil then
  hs.message = ready.reason .. ": " .. (ready.message or "")
else
  hs.message = "No Ready condition"
end
return hs
