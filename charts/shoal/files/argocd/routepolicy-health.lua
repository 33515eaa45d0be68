-- Argo CD health of a Shoal RoutePolicy (resource.customizations.health.shoal.dev_RoutePolicy).
local hs = {}
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
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    if c.status == "True" then
      hs.status = "Healthy"
    else
      hs.status = "Degraded"
    end
    hs.message = c.message or c.reason
    return hs
  end
end
hs.status = "Progressing"
hs.message = "No Ready condition yet"
return hs
