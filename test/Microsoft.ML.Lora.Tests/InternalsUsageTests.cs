using Mono.Cecil;
using Mono.Cecil.Cil;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// Microsoft.ML.Lora compiles against publicized ML.NET assemblies, so the compiler cannot catch an accidental use of an
/// ML.NET internal. This test reads the compiled assembly and checks that every reference to a non-public ML.NET type or
/// member comes from the Microsoft.ML.Lora.Internal namespace (docs/ARCHITECTURE.md, "ML.NET internals": one small folder).
/// The ONNX scoring package (Microsoft.ML.Lora.Onnx) follows the same rule with its own Internal folder.
/// </summary>
[TestClass]
public sealed class InternalsUsageTests
{
    private static readonly string[] MlNetAssemblies = ["Microsoft.ML.Core", "Microsoft.ML.Data"];

    [TestMethod]
    [DataRow("Microsoft.ML.Lora")]
    [DataRow("Microsoft.ML.Lora.Onnx")]
    public void LoraAssembly_NonPublicMlNetMembers_UsedOnlyInInternalNamespace(string assemblyName)
    {
        string path = assemblyName == "Microsoft.ML.Lora"
            ? typeof(LoraTransformer).Assembly.Location
            : typeof(Onnx.LoraOnnxTransformer).Assembly.Location;
        string internalNamespace = assemblyName + ".Internal";
        using var resolver = new DefaultAssemblyResolver();
        resolver.AddSearchDirectory(AppContext.BaseDirectory);
        using var assembly = AssemblyDefinition.ReadAssembly(path, new ReaderParameters { AssemblyResolver = resolver });
        var violations = new SortedSet<string>(StringComparer.Ordinal);
        int internalUses = 0;
        foreach (var type in assembly.MainModule.GetTypes())
        {
            bool allowed = IsInternalFolder(type, internalNamespace);
            foreach (var method in type.Methods.Where(m => m.HasBody))
            {
                foreach (var instruction in method.Body.Instructions)
                {
                    if (instruction.Operand is MemberReference member && NonPublicMlNet(member) is string what)
                    {
                        if (allowed)
                        {
                            internalUses++;
                        }
                        else
                        {
                            violations.Add($"{type.FullName}.{method.Name} uses {what}");
                        }
                    }
                }
            }
        }

        foreach (var attribute in assembly.CustomAttributes)
        {
            if (NonPublicMlNet(attribute.AttributeType) is not null)
            {
                internalUses++;
            }
        }

        Assert.IsEmpty(violations, string.Join(Environment.NewLine, violations));

        // The model-file code does use internals (SetVersionInfo, LoadableClass, ...): the check must see them.
        Assert.IsGreaterThan(5, internalUses);
    }

    private static bool IsInternalFolder(TypeDefinition type, string internalNamespace)
    {
        for (var t = type; t is not null; t = t.DeclaringType)
        {
            if (t.Namespace == internalNamespace)
            {
                return true;
            }
        }

        return false;
    }

    private static string? NonPublicMlNet(MemberReference member)
    {
        var declaring = member as TypeReference ?? member.DeclaringType;
        if (declaring is null)
        {
            return null;
        }

        var scope = (declaring.GetElementType().Scope as AssemblyNameReference)?.Name ?? declaring.Module.Assembly.Name.Name;
        if (!MlNetAssemblies.Contains(scope))
        {
            return null;
        }

        if (member is GenericInstanceMethod generic)
        {
            member = generic.ElementMethod;
        }

        var definition = member.Resolve();
        if (definition is null)
        {
            return $"unresolvable {member.FullName}";
        }

        bool typeVisible = IsVisible(definition as TypeDefinition ?? definition.DeclaringType);
        bool memberVisible = definition switch
        {
            MethodDefinition m => m.IsPublic || m.IsFamily || m.IsFamilyOrAssembly,
            FieldDefinition f => f.IsPublic || f.IsFamily || f.IsFamilyOrAssembly,
            _ => true,
        };
        return typeVisible && memberVisible ? null : member.FullName;
    }

    private static bool IsVisible(TypeDefinition type)
    {
        for (var t = type; t is not null; t = t.DeclaringType)
        {
            if (!(t.IsPublic || t.IsNestedPublic || t.IsNestedFamily || t.IsNestedFamilyOrAssembly))
            {
                return false;
            }
        }

        return true;
    }
}
